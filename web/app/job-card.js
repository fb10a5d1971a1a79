// One job in a queue list: state, live progress (stage, step, ETA, preview frame), error,
// and the cancel / retry / reproduce actions. The card keeps fixed-size slots for every
// live value and updates them in place, so progress never shifts the layout.

import * as endpoints from './endpoints.js';
import * as jobsFeed from './jobs-feed.js';
import { attempt, formatDuration, h, toast } from './ui.js';

const ACTIVE = new Set(['queued', 'running']);

/** A human title for a job, from its kind and parameters. */
export function jobTitle(job) {
  const p = job.params ?? {};
  const what = {
    shoot: 'Generate & review', generate: 'Generate', plan: 'Plan storyboard', expand: 'Expand prompt', stitch: 'Stitch',
    render: 'Render', 'assets.reindex': 'Reindex the asset library', 'assets.import_folder': 'Import a folder',
    finish: `Finish as ${p.target}`, keyframe: 'Keyframe of', look: `Look of ${p.character_id} in`,
  }[job.kind] ?? job.kind;
  const target = p.shot_id ? ` shot #${p.shot_id}` : p.storyboard_id ? ` storyboard #${p.storyboard_id}`
    : p.take_id ? ` take #${p.take_id}` : p.asset_id ? ` asset #${p.asset_id}` : '';
  return `${what}${target}`;
}

/**
 * Builds a card; returns {el, update(job)}. `onReproduce(job)` is offered for finished
 * generation jobs when given.
 */
export function jobCard(job, { onReproduce } = {}) {
  const badge = h('span', { class: 'badge' });
  const title = h('span', { class: 'title ellipsis grow' });
  const bar = h('div');
  // Two fixed lines: the stage as the job reports it ("attempt 2/3: generating: denoising"),
  // then step and ETA, so a long stage never pushes the numbers out of view.
  const stage = h('div', { class: 'meta ellipsis' });
  const counts = h('div', { class: 'meta' });
  const error = h('div', { class: 'error', hidden: true });
  const preview = h('img', { class: 'preview', alt: 'Preview frame', hidden: true });
  const cancel = h('button', { class: 'small', onclick: () => attempt('Cancelling the job', async () => {
    jobsFeed.put(await endpoints.jobs.cancel(current.id));
  }) }, 'Cancel');
  const retry = h('button', { class: 'small', onclick: () => attempt('Retrying the job', async () => {
    jobsFeed.put(await endpoints.jobs.retry(current.id));
    toast('Job queued again.', 'ok');
  }) }, 'Retry');
  const reproduce = h('button', { class: 'small', title: 'Copy this generation’s parameters into its shot',
    onclick: () => onReproduce?.(current) }, 'Reproduce');
  const el = h('div', { class: 'job', dataset: { jobId: job.id } },
    h('div', { class: 'row' }, title, badge),
    h('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100 }, bar),
    stage, counts, preview, error,
    h('div', { class: 'row' }, cancel, retry, reproduce));
  let current = job;

  function update(next) {
    current = next;
    const state = next.state ?? 'queued';
    const p = next.progress ?? {};
    title.textContent = jobTitle(next);
    title.title = title.textContent;
    badge.className = `badge ${state}`;
    badge.textContent = state;
    const fraction = state === 'succeeded' ? 1 : p.total ? Math.min(1, p.step / p.total) : 0;
    bar.style.width = `${(fraction * 100).toFixed(1)}%`;
    el.querySelector('.progress').setAttribute('aria-valuenow', Math.round(fraction * 100));
    const [stageText, countText] = describe(next, p);
    stage.textContent = stageText;
    stage.title = stageText;
    counts.textContent = countText;
    const previewUrl = p.preview_url ?? (p.preview ? `data:image/png;base64,${p.preview}` : null);
    if (previewUrl && ACTIVE.has(state)) {
      if (preview.getAttribute('src') !== previewUrl) preview.src = previewUrl;
      preview.hidden = false;
    } else {
      preview.hidden = true;
    }
    error.hidden = !next.error;
    error.textContent = next.error ?? '';
    cancel.hidden = !ACTIVE.has(state);
    retry.hidden = !['failed', 'cancelled', 'interrupted'].includes(state);
    reproduce.hidden = !(onReproduce && (jobsFeed.TAKE_KINDS.has(next.kind) || next.kind === 'keyframe') && state === 'succeeded');
  }

  update(job);
  return { el, update };
}

/** The card's two status lines: what the job is doing, and its step and ETA. */
function describe(job, p) {
  // The card a job runs (or ran) on, e.g. "on cuda:1", when the studio has one.
  const card = job.card ? `on ${job.card}` : '';
  switch (job.state) {
    case 'running': {
      const steps = p.total ? `step ${p.step} of ${p.total}` : '';
      const eta = p.eta_s !== undefined && p.eta_s !== null ? `ETA ${formatDuration(p.eta_s)}` : '';
      return [p.stage ? String(p.stage) : 'starting', [card, steps, eta].filter(Boolean).join(' · ')];
    }
    case 'queued': return ['waiting for its lane', ''];
    case 'succeeded': return [job.finished_at ? `done ${new Date(job.finished_at).toLocaleTimeString()}` : 'done', card];
    case 'failed': return [`failed after ${job.attempts ?? 1} attempt(s)`, ''];
    case 'interrupted': return ['interrupted by a server restart', ''];
    case 'cancelled': return ['cancelled', ''];
    default: return [job.state ?? '', ''];
  }
}

/**
 * A live list of job cards in `container`, filtered by `filter(job)`; returns a cleanup.
 */
export function jobList(container, { filter = () => true, onReproduce, empty = 'No jobs yet.' } = {}) {
  const cards = new Map();
  const emptyEl = h('div', { class: 'empty small' }, empty);

  function rebuild() {
    const list = jobsFeed.all().filter(filter);
    container.replaceChildren();
    cards.clear();
    for (const job of list) add(job, false);
    if (!list.length) container.append(emptyEl);
  }

  function add(job, prepend) {
    const card = jobCard(job, { onReproduce });
    cards.set(job.id, card);
    emptyEl.remove();
    if (prepend) container.prepend(card.el); else container.append(card.el);
  }

  const unsubscribe = jobsFeed.subscribe((job) => {
    if (job === null) { rebuild(); return; }
    if (!filter(job)) return;
    const card = cards.get(job.id);
    if (card) card.update(job); else add(job, true);
  });
  rebuild();
  return unsubscribe;
}
