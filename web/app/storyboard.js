// The storyboard editor: shot cards on a timeline (add, duplicate, delete, drag or Alt+Arrow to
// reorder) and the selected shot's editor. Edits autosave; until the server has them they
// live in localStorage drafts, which are replayed after a failed request or a reload.

import * as endpoints from './endpoints.js';
import { assetBrowser, assetThumb } from './asset-browser.js';
import { keyframeBox } from './keyframe.js';
import { loraPicker } from './loras.js';
import { runJob } from './run-job.js';
import { loadBible } from './bible.js';
import * as jobsFeed from './jobs-feed.js';
import { attempt, clear, confirmDialog, debounce, h, modal, toast } from './ui.js';
import { clearDraft, loadDraft, saveDraft } from './drafts.js';

const CAMERAS = ['static', 'slow pan left', 'slow pan right', 'dolly in', 'dolly out', 'tilt up', 'tilt down',
  'orbit', 'handheld', 'crane up', 'tracking shot', 'close-up', 'wide shot'];
const TRANSITIONS = [['cut', 'Cut'], ['crossfade', 'Crossfade'], ['fade-through-black', 'Fade through black']];
const EDITABLE = ['prompt', 'negative_prompt', 'keyframe_prompt', 'duration_s', 'camera', 'transition', 'model', 'seed'];
const PENDING = new Set(['draft', 'failed']);

/** The fields of a shot that a copy (duplicate) carries. */
function copyFields(shot) {
  const fields = Object.fromEntries(EDITABLE.map((k) => [k, shot[k]]).filter(([, v]) => v !== null && v !== undefined));
  fields.references = shot.references ?? [];
  return fields;
}

/** The video asset to show for a shot: its chosen take, else its newest. */
export function shotVideo(shot) {
  const takes = shot.takes ?? [];
  return takes.find((t) => t.id === shot.chosen_take_id) ?? takes[takes.length - 1] ?? null;
}

/**
 * A take's review as the reviewer plugin left it: score, verdict and reasons. The reasons are
 * plugin-written and untrusted, so they only ever become text nodes (and a title).
 */
export function takeReview(review) {
  if (!review) return h('div', { class: 'take-review' }, h('span', { class: 'small muted' }, 'not reviewed'));
  const accepted = review.verdict === 'accept';
  const score = Number.isFinite(review.score) ? review.score.toFixed(2) : '–';
  return h('div', { class: 'take-review' },
    h('div', { class: 'row' },
      h('span', { class: 'score', title: 'Reviewer score, 0 to 1' }, score),
      h('span', { class: `badge ${accepted ? 'accepted' : 'retry'}` }, accepted ? 'accepted' : 'retry')),
    h('div', { class: 'reasons small', title: review.reasons }, review.reasons));
}

/** The marker of a shot that needs the user to look: a badge and, unless `compact`, the sentence. */
export function attentionNote(shot, { compact = false } = {}) {
  if (!shot.attention) return null;
  if (compact) return h('span', { class: 'badge attention', role: 'img', title: shot.attention, 'aria-label': `Needs attention: ${shot.attention}` }, '⚠');
  return h('div', { class: 'attention-note', role: 'note' },
    h('span', { class: 'badge attention' }, '⚠ needs attention'), ' ', shot.attention);
}

export async function storyboardEditor(container, { project, board, actions }) {
  let shots = [];
  let selectedId = loadDraft(`selected.${board.id}`);
  const unsaved = new Map(loadDraftEntries());
  const timeline = h('div', { class: 'timeline', role: 'listbox', 'aria-label': 'Shots', 'aria-orientation': 'horizontal' });
  const editorBox = h('div');
  const summary = h('span', { class: 'muted small' });
  clear(actions,
    h('button', { id: 'generate-pending', onclick: generatePending }, 'Generate pending'),
    h('a', { class: 'button', href: `#/projects/${project.id}/review` }, 'Review & stitch'));
  container.append(
    h('div', { class: 'panel stack' },
      h('div', { class: 'row' }, h('h3', { class: 'grow' }, 'Timeline'), summary),
      timeline),
    editorBox);

  function loadDraftEntries() {
    const stored = loadDraft(`shots.${board.id}`) ?? {};
    return Object.entries(stored).map(([id, fields]) => [Number(id), fields]);
  }
  function persistDrafts() {
    saveDraft(`shots.${board.id}`, Object.fromEntries(unsaved));
  }

  async function reload() {
    shots = await endpoints.shots.list(board.id);
    // Drafts of shots that no longer exist are dropped; the others are shown and re-sent.
    for (const id of [...unsaved.keys()]) if (!shots.some((s) => s.id === id)) unsaved.delete(id);
    persistDrafts();
    for (const shot of shots) if (unsaved.has(shot.id)) Object.assign(shot, unsaved.get(shot.id));
    if (!shots.some((s) => s.id === selectedId)) selectedId = shots[0]?.id ?? null;
    drawTimeline();
    drawEditor();
    if (unsaved.size) {
      toast(`Restored unsaved edits of ${unsaved.size} shot${unsaved.size > 1 ? 's' : ''}; saving them now.`);
      flush();
    }
  }

  // --- saving -------------------------------------------------------------------------
  let saving = null;
  const flushSoon = debounce(() => flush(), 600);
  async function flush() {
    if (saving) { await saving; }
    const batch = [...unsaved.entries()];
    if (!batch.length) return;
    saving = (async () => {
      for (const [id, fields] of batch) {
        const result = await attempt('Saving the shot', () => endpoints.shots.update(id, fields));
        if (!result) { setSaveState('Not saved — kept as a draft, will retry'); return; }
        // Only forget the fields the server now has; later keystrokes stay pending.
        const pending = unsaved.get(id);
        if (pending && Object.entries(fields).every(([k, v]) => pending[k] === v)) unsaved.delete(id);
        persistDrafts();
        const index = shots.findIndex((s) => s.id === id);
        if (index >= 0) shots[index] = { ...result, ...unsaved.get(id) };
        updateCard(shots[index]);
        if (id === selectedId) refreshEditor();
      }
      setSaveState('All changes saved');
    })();
    await saving;
    saving = null;
  }
  const retryTimer = setInterval(() => { if (unsaved.size && !saving) flush(); }, 5000);
  let saveStateEl = null;
  function setSaveState(text) { if (saveStateEl) saveStateEl.textContent = text; }

  function edit(stale, key, value) {
    // The editor's controls may hold a shot object that a refresh has since replaced.
    const shot = shots.find((s) => s.id === stale.id) ?? stale;
    shot[key] = value;
    unsaved.set(shot.id, { ...unsaved.get(shot.id), [key]: value });
    persistDrafts();
    setSaveState('Editing…');
    updateCard(shot);
    flushSoon();
  }

  // --- timeline -----------------------------------------------------------------------
  function drawTimeline() {
    const total = shots.reduce((sum, s) => sum + (Number(s.duration_s) || 0), 0);
    const attention = shots.filter((s) => s.attention).length;
    summary.textContent = `${shots.length} shot${shots.length === 1 ? '' : 's'} · ${total.toFixed(1)} s`
      + (attention ? ` · ${attention} need${attention === 1 ? 's' : ''} attention` : '');
    clear(timeline, shots.map(card),
      h('button', { class: 'shot-card add-card', id: 'add-shot', onclick: addShot, 'aria-label': 'Add shot' }, '+ Add shot'));
  }

  function card(shot) {
    const take = shotVideo(shot);
    const el = h('div', {
      class: shot.attention ? 'shot-card attention' : 'shot-card', role: 'option', tabindex: 0, draggable: 'true',
      'aria-selected': String(shot.id === selectedId), dataset: { shotId: shot.id },
      onclick: () => select(shot.id),
      onkeydown: (e) => onCardKey(e, shot),
    },
    attentionNote(shot, { compact: true }),
    h('div', { class: 'thumb' }, take
      ? h('video', { src: `${endpoints.assets.fileUrl(take.asset_id)}#t=0.05`, preload: 'metadata', muted: true })
      : (shot.references?.length ? h('img', { src: endpoints.assets.fileUrl(shot.references[0]), alt: '', loading: 'lazy' }) : h('span', { class: 'play', 'aria-hidden': 'true' }))),
    h('div', { class: 'row' }, h('span', { class: 'num' }, `#${shot.position + 1} · ${Number(shot.duration_s).toFixed(1)}s`),
      h('span', { class: 'spacer' }), h('span', { class: `badge ${shot.status}` }, shot.status)),
    h('div', { class: 'prompt' }, shot.prompt || h('span', { class: 'muted' }, 'No prompt yet')));
    el.addEventListener('dragstart', (e) => {
      e.dataTransfer.setData('text/x-shot', String(shot.id));
      e.dataTransfer.effectAllowed = 'move';
      el.classList.add('dragging');
    });
    el.addEventListener('dragend', () => el.classList.remove('dragging'));
    el.addEventListener('dragover', (e) => {
      if (!e.dataTransfer.types.includes('text/x-shot')) return;
      e.preventDefault();
      const after = e.offsetX > el.clientWidth / 2;
      el.classList.toggle('drop-after', after);
      el.classList.toggle('drop-before', !after);
    });
    el.addEventListener('dragleave', () => el.classList.remove('drop-after', 'drop-before'));
    el.addEventListener('drop', (e) => {
      e.preventDefault();
      const after = el.classList.contains('drop-after');
      el.classList.remove('drop-after', 'drop-before');
      const moved = Number(e.dataTransfer.getData('text/x-shot'));
      if (moved && moved !== shot.id) moveShot(moved, shot.id, after);
    });
    return el;
  }

  function updateCard(shot) {
    if (!shot) return;
    const old = timeline.querySelector(`[data-shot-id="${shot.id}"]`);
    if (old) {
      const focused = document.activeElement === old;
      const next = card(shot);
      old.replaceWith(next);
      if (focused) next.focus();
    }
  }

  function onCardKey(e, shot) {
    if (e.altKey && (e.key === 'ArrowLeft' || e.key === 'ArrowRight')) {
      e.preventDefault();
      const index = shots.findIndex((s) => s.id === shot.id);
      const target = shots[index + (e.key === 'ArrowLeft' ? -1 : 1)];
      if (target) moveShot(shot.id, target.id, e.key === 'ArrowRight', true);
    } else if (e.key === 'ArrowLeft' || e.key === 'ArrowRight') {
      e.preventDefault();
      const sibling = e.key === 'ArrowLeft' ? e.currentTarget.previousElementSibling : e.currentTarget.nextElementSibling;
      sibling?.focus();
    } else if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      select(shot.id);
      editorBox.querySelector('textarea')?.focus();
    }
  }

  async function moveShot(movedId, targetId, after, keepFocus = false) {
    const order = shots.map((s) => s.id).filter((id) => id !== movedId);
    const at = order.indexOf(targetId) + (after ? 1 : 0);
    order.splice(at, 0, movedId);
    const result = await attempt('Reordering shots', () => endpoints.shots.reorder(board.id, order));
    if (!result) return;
    applyServerShots(result);
    drawTimeline();
    drawEditor();
    if (keepFocus) timeline.querySelector(`[data-shot-id="${movedId}"]`)?.focus();
  }

  function applyServerShots(list) {
    shots = list.map((s) => ({ ...s, ...unsaved.get(s.id) }));
  }

  function select(id) {
    selectedId = id;
    saveDraft(`selected.${board.id}`, id);
    for (const el of timeline.querySelectorAll('.shot-card[data-shot-id]')) {
      el.setAttribute('aria-selected', String(Number(el.dataset.shotId) === id));
    }
    drawEditor();
  }

  async function addShot() {
    const shot = await attempt('Adding a shot', () => endpoints.shots.create(board.id, { prompt: '', duration_s: 3 }));
    if (!shot) return;
    shots.push(shot);
    selectedId = shot.id;
    drawTimeline();
    drawEditor();
    editorBox.querySelector('textarea')?.focus();
  }

  async function duplicate(shot) {
    const copy = await attempt('Duplicating the shot', () => endpoints.shots.create(board.id, copyFields(shot)));
    if (!copy) return;
    // The copy takes the shot's own LoRAs too (inherited ones apply to it anyway).
    const loras = await attempt('Reading the shot\'s LoRAs', () => endpoints.loras.list({ shot: shot.id }));
    if (loras?.length) {
      const choices = loras.map(({ asset_id, strength, strength_2 }) => ({ asset_id, strength, strength_2 }));
      await attempt('Copying the shot\'s LoRAs', () => endpoints.loras.set({ shot: copy.id }, choices));
    }
    const order = shots.map((s) => s.id);
    order.splice(order.indexOf(shot.id) + 1, 0, copy.id);
    const result = await attempt('Placing the copy', () => endpoints.shots.reorder(board.id, order));
    if (result) applyServerShots(result); else shots.push(copy);
    selectedId = copy.id;
    drawTimeline();
    drawEditor();
    toast('Shot duplicated.', 'ok');
  }

  async function remove(shot) {
    if (!await confirmDialog(`Delete shot ${shot.position + 1}?`, 'Its takes stay in the asset library.')) return;
    if (await attempt('Deleting the shot', () => endpoints.shots.remove(shot.id)) === undefined) return;
    unsaved.delete(shot.id);
    persistDrafts();
    await attempt('Reloading shots', reload);
  }

  // --- generation -----------------------------------------------------------------------
  /**
   * A `shoot` job's parameters: the shot, rendered with the bible's settings as saved. The
   * studio generates it, has the reviewer look at the take and regenerates up to the
   * project's attempt limit.
   */
  function generation(shot) {
    return { shot_id: shot.id, render: loadBible(board).render };
  }

  async function generate(shot) {
    await flush();
    const params = { ...generation(shot), continue_previous: Boolean(continueBox?.checked) };
    const job = await attempt('Starting the generation', () => endpoints.jobs.submit('shoot', params, project.id));
    if (!job) return;
    jobsFeed.put(job);
    toast(`Shot ${shot.position + 1} queued for generation.`, 'ok');
  }

  async function generatePending() {
    await flush();
    const pending = shots.filter((s) => PENDING.has(s.status));
    if (!pending.length) { toast('No pending shots: every shot is generated or queued.'); return; }
    for (const shot of pending) {
      const job = await attempt(`Queuing shot ${shot.position + 1}`, () => endpoints.jobs.submit('shoot', generation(shot), project.id));
      if (!job) return;
      jobsFeed.put(job);
    }
    toast(`${pending.length} shot${pending.length > 1 ? 's' : ''} queued.`, 'ok');
  }

  // Refresh shot cards (status, new takes, reviews) whenever a take job of this project changes
  // state, or a shoot moves to another attempt's phase ("attempt 2/3: reviewing" means take 2
  // exists; "attempt 3/3: generating" means its review does).
  const reloadSoon = debounce(() => attempt('Refreshing shots', async () => {
    applyServerShots(await endpoints.shots.list(board.id));
    drawTimeline();
    refreshEditor();
  }), 300);
  const lastPhase = new Map();
  const unsubscribe = jobsFeed.subscribe((job) => {
    if (!job || job.project_id !== project.id || !(jobsFeed.TAKE_KINDS.has(job.kind) || job.kind === 'keyframe')) return;
    const phase = `${job.state} ${String(job.progress?.stage ?? '').match(/^attempt \d+\/\d+: \w+/)?.[0] ?? ''}`;
    if (lastPhase.get(job.id) === phase) return;
    lastPhase.set(job.id, phase);
    reloadSoon();
  });

  async function expand(shot, out) {
    await flush();
    clear(out, h('span', { class: 'muted' }, 'Expanding…'));
    const job = await attempt('Expanding the prompt', () => runJob('expand', { shot_id: shot.id }, project.id));
    if (!job) { clear(out); return; }
    const result = job.result ?? {};
    clear(out,
      h('div', { class: 'field' }, h('label', {}, 'Expanded prompt'), h('div', { class: 'expanded', id: 'expanded-prompt' }, result.prompt ?? '')),
      result.negative_prompt ? h('div', { class: 'field' }, h('label', {}, 'Expanded negative prompt'), h('div', { class: 'expanded' }, result.negative_prompt)) : null,
      h('div', { class: 'row' },
        h('button', { class: 'small primary', onclick: () => {
          edit(shot, 'prompt', result.prompt ?? shot.prompt);
          if (result.negative_prompt !== undefined) edit(shot, 'negative_prompt', result.negative_prompt);
          drawEditor();
        } }, 'Use expanded prompt'),
        h('button', { class: 'small', onclick: () => clear(out) }, 'Dismiss')));
  }

  /** The parameters a finished take job used: a shoot's are those of the take it chose. */
  function takeParams(job) {
    if (job.kind === 'keyframe') return job.result ?? null;
    if (job.kind !== 'shoot') return job.result?.params ?? job.result?.generation?.params ?? job.params?.params ?? null;
    const attempts = job.result?.attempts ?? [];
    return attempts.find((a) => a.take_id === job.result.chosen_take_id) ?? attempts[attempts.length - 1] ?? null;
  }

  /** Copies a finished generation's parameters back into its shot (a keyframe's into its keyframe prompt). */
  async function reproduce(seen) {
    // The live feed carries a job's state, not its result: fetch the finished job whole.
    const job = seen.result ? seen : await attempt('Loading the job', () => endpoints.jobs.get(seen.id));
    if (!job) return;
    const params = takeParams(job);
    const shot = shots.find((s) => s.id === (job.params?.shot_id ?? job.result?.shot_id));
    if (!shot || !params) { toast('This job has no generation parameters to copy.', 'error'); return; }
    if (job.kind === 'keyframe') {
      edit(shot, 'keyframe_prompt', params.prompt);
      edit(shot, 'seed', params.seed);
      select(shot.id);
      toast(`Copied the keyframe prompt and seed into shot ${shot.position + 1}.`, 'ok');
      return;
    }
    if (params.prompt !== undefined) edit(shot, 'prompt', params.prompt);
    if (params.negative_prompt !== undefined) edit(shot, 'negative_prompt', params.negative_prompt);
    if (params.seed !== undefined) edit(shot, 'seed', params.seed);
    const model = job.result?.model ?? params.model;
    if (model) edit(shot, 'model', model);
    select(shot.id);
    toast(`Copied prompt, seed and model into shot ${shot.position + 1}.`, 'ok');
  }

  // --- editor -------------------------------------------------------------------------
  // Parts of the editor that change while the user types (a shoot adds takes and reviews, a
  // chosen take clears the shot's attention) are updated in place; the fields are left alone.
  let statusBadge = null;
  let attentionBox = null;
  let takesBox = null;
  let generateButton = null;
  /** "Continue from the previous shot": the take starts from that shot's last frame. */
  let continueBox = null;
  let keyframe = null;
  // Installed models: the shot's model picker lists video models; the keyframe box notes a
  // text-to-video one. Suggestions only: without the list the field still takes any name.
  let models = [];
  const modelsLoaded = endpoints.models.list().then((list) => { models = list; }, () => {});
  function refreshEditor() {
    const shot = shots.find((s) => s.id === selectedId);
    if (!shot || !statusBadge) return;
    keyframe.refresh(shot);
    statusBadge.className = `badge ${shot.status}`;
    statusBadge.textContent = shot.status;
    clear(attentionBox, attentionNote(shot));
    drawTakes(shot);
    generateButton.textContent = shot.takes?.length ? 'Regenerate' : 'Generate';
  }

  function chooseTake(shot, take) {
    edit(shot, 'chosen_take_id', take.id);
    refreshEditor();
  }

  /**
   * The shot's takes, each with its review; the chosen one is pressed. Redrawn only when they
   * changed (an autosave must not reload the videos), keeping keyboard focus on its take.
   */
  function drawTakes(shot) {
    const takes = shot.takes ?? [];
    const drawn = JSON.stringify([shot.id, shot.chosen_take_id, shot.chosen_by_user, takes.map((t) => [t.id, t.review?.id])]);
    if (takesBox.dataset.drawn === drawn) return;
    takesBox.dataset.drawn = drawn;
    const focused = takesBox.contains(document.activeElement) ? document.activeElement.closest('[data-take-id]')?.dataset.takeId : null;
    clear(takesBox, takes.length ? [h('label', {}, `Takes (${takes.length})`),
      h('div', { class: 'takes' }, takes.map((t) => {
        const chosen = t.id === shot.chosen_take_id;
        return h('div', { class: 'take', dataset: { takeId: t.id } },
          h('button', { class: 'take-pick', 'aria-pressed': String(chosen), title: 'Use this take', onclick: () => chooseTake(shot, t) },
            h('div', { class: 'thumb' }, h('video', { src: `${endpoints.assets.fileUrl(t.asset_id)}#t=0.05`, preload: 'metadata', muted: true })),
            h('div', { class: 'row small' }, h('span', { class: 'grow' }, `Take #${t.id}`),
              chosen ? h('span', { class: 'chosen' }, shot.chosen_by_user ? '✓ your choice' : '✓ chosen') : null)),
          takeReview(t.review));
      }))] : []);
    if (focused) takesBox.querySelector(`[data-take-id="${focused}"] button`)?.focus();
  }

  function drawEditor() {
    const shot = shots.find((s) => s.id === selectedId);
    if (!shot) {
      clear(editorBox, h('div', { class: 'empty' }, shots.length ? 'Select a shot to edit it.' : 'No shots yet. Plan the script on the left, or add a shot.'));
      return;
    }
    const input = (key, attrs = {}) => {
      const tag = attrs.rows ? 'textarea' : 'input';
      const el = h(tag, { ...attrs, id: `shot-${key}`, value: shot[key] ?? '' });
      el.addEventListener('input', () => {
        let value = el.value;
        if (key === 'duration_s') value = Number(value) > 0 ? Number(value) : shot.duration_s;
        if (key === 'seed') value = value === '' ? null : Number(value);
        edit(shot, key, value);
      });
      return el;
    };
    const field = (label, control) => h('div', { class: 'field' }, h('label', { for: control.id }, label), control);
    const transition = h('select', { id: 'shot-transition' },
      TRANSITIONS.map(([value, label]) => h('option', { value, selected: shot.transition === value }, label)));
    if (!TRANSITIONS.some(([v]) => v === shot.transition)) transition.prepend(h('option', { value: shot.transition, selected: true }, shot.transition));
    transition.addEventListener('change', () => edit(shot, 'transition', transition.value));
    const camera = input('camera', { list: 'cameras', placeholder: 'static' });
    const model = input('model', { list: 'models', placeholder: 'default model' });
    const modelsList = h('datalist', { id: 'models' });
    modelsLoaded.then(() => {
      modelsList.replaceChildren(...models.filter((m) => m.role === 'video').map((m) => h('option', { value: m.name })));
      keyframe.refresh(shots.find((s) => s.id === selectedId) ?? shot);
    });
    keyframe = keyframeBox({ project, board, models: () => models, save: flush, made: () => attempt('Reloading shots', reload) });
    const expandOut = h('div', { class: 'stack' });
    saveStateEl = h('span', { class: 'small muted', 'aria-live': 'polite' }, unsaved.has(shot.id) ? 'Not saved yet' : 'All changes saved');
    statusBadge = h('span', { class: `badge ${shot.status}` }, shot.status);
    attentionBox = h('div');
    takesBox = h('div', { class: 'field' });
    generateButton = h('button', { class: 'primary', id: 'generate', onclick: () => generate(shot) });
    continueBox = shot.position > 0 ? h('input', { type: 'checkbox', id: 'continue-previous' }) : null;

    const refs = h('div', { class: 'refs' }, (shot.references ?? []).map((assetId) => h('div', { class: 'ref' },
      assetThumb({ id: assetId, kind: 'image' }),
      h('button', { class: 'icon small', 'aria-label': 'Remove reference', onclick: () => {
        edit(shot, 'references', shot.references.filter((id) => id !== assetId));
        drawEditor();
      } }, '✕'))),
    h('button', { class: 'small', id: 'add-reference', onclick: () => pickReference(shot) }, '+ Reference image'));

    clear(editorBox, h('section', { class: 'panel stack shot-editor', 'aria-label': `Shot ${shot.position + 1}` },
      h('div', { class: 'row' }, h('h2', {}, `Shot ${shot.position + 1}`), statusBadge, h('span', { class: 'spacer' }), saveStateEl),
      attentionBox,
      field('Prompt', input('prompt', { rows: 3, placeholder: 'What the camera sees' })),
      field('Negative prompt', input('negative_prompt', { rows: 2, placeholder: 'What to avoid' })),
      h('div', { class: 'grid-3' },
        field('Duration (s)', input('duration_s', { type: 'number', min: 0.5, max: 60, step: 0.5 })),
        field('Camera', camera),
        field('Transition in', transition)),
      h('div', { class: 'grid-2' },
        field('Model', model),
        field('Seed (empty = random)', input('seed', { type: 'number', min: 0, step: 1 }))),
      h('datalist', { id: 'cameras' }, CAMERAS.map((c) => h('option', { value: c }))), modelsList,
      h('div', { class: 'field' }, h('label', {}, 'Character & reference images'), refs),
      loraPicker({ shot: shot.id }, 'Shot LoRAs (over the project\'s and characters\')'),
      field('Keyframe prompt', input('keyframe_prompt', { rows: 2, placeholder: 'The first moment as a still (empty: the prompt)' })),
      keyframe.el,
      expandOut,
      takesBox,
      h('div', { class: 'row wrap' },
        h('button', { id: 'expand', onclick: () => expand(shot, expandOut) }, 'Expand prompt'),
        generateButton,
        continueBox && h('label', { class: 'small', title: 'Start this take from the last frame of the previous shot\'s chosen take (image-to-video models)' },
          continueBox, ` Continue from shot ${shot.position}`),
        h('span', { class: 'spacer' }),
        h('button', { class: 'small', id: 'duplicate', onclick: () => duplicate(shot) }, 'Duplicate'),
        h('button', { class: 'small danger', id: 'delete-shot', onclick: () => remove(shot) }, 'Delete'))));
    refreshEditor();
  }

  async function pickReference(shot) {
    let browser;
    const asset = await modal((close) => {
      browser = assetBrowser({ fixed: { kind: 'image' }, onPick: close });
      queueMicrotask(() => browser.focus());
      return h('div', { class: 'stack' }, h('h2', {}, 'Choose a reference image'), browser.el,
        h('div', { class: 'buttons' }, h('button', { onclick: () => close(undefined) }, 'Cancel')));
    }, { wide: true });
    browser?.destroy();
    if (!asset) return;
    edit(shot, 'references', [...new Set([...(shot.references ?? []), asset.id])]);
    drawEditor();
  }

  await reload();
  return {
    reload: () => attempt('Reloading shots', reload),
    reproduce,
    destroy: () => { unsubscribe(); clearInterval(retryTimer); flush(); },
  };
}
