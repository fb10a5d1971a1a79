// Review and finish: a seekable player per shot with its takes and their reviews to pick from,
// the shots that need the user's attention, finishing (a take, or the stitched piece, upscaled
// and retimed to a delivery target with the models in models/finishing), the stitcher, and the
// stitched result with its download.

import * as endpoints from './endpoints.js';
import * as jobsFeed from './jobs-feed.js';
import { runJob } from './run-job.js';
import { attentionNote, shotVideo, takeReview } from './storyboard.js';
import { attempt, clear, confirmDialog, h, toast } from './ui.js';

/** For a take generated across several cards: how many, and each card's time on hover. */
function takeSplit(layout) {
  if (!layout || layout.split_cards < 2) return null;
  const times = layout.ranks.map((r) =>
    `${r.device}: ${r.seconds.toFixed(1)} s, ${(r.exchange.ms / 1000).toFixed(1)} s of it exchanging`);
  return h('span', { class: 'small muted take-split', title: times.join('\n') },
    `${layout.split_cards} cards${layout.cfg_parallel ? ', CFG parallel' : ''}`);
}

/** Delivery targets offered for finishing (the grammar is docs/finishing.md's). */
const FINISH_TARGETS = [
  ['4k24', '4K (3840×2160), 24 fps'],
  ['4k30', '4K (3840×2160), 30 fps'],
  ['4k', '4K, source frame rate'],
  ['1440p24', '1440p, 24 fps'],
  ['1080p24', '1080p, 24 fps'],
  ['1080p30', '1080p, 30 fps'],
  ['1080p', '1080p, source frame rate'],
  ['720p24', '720p, 24 fps'],
  ['x2', 'Source size, double frame rate'],
];

export async function reviewScreen(container, { project, board, actions }) {
  const grid = h('div', { class: 'review-grid' });
  const final = h('section', { class: 'panel stack', 'aria-label': 'Stitched result' });
  const stitchButton = h('button', { class: 'primary', id: 'stitch', onclick: stitch }, 'Stitch final video');
  clear(actions, stitchButton);
  const finishTarget = h('select', { id: 'finish-target' },
    FINISH_TARGETS.map(([value, label]) => h('option', { value }, label)));
  const finishPiece = h('input', { type: 'checkbox', id: 'finish-piece', style: 'width:auto' });
  const finishModels = h('div', { class: 'small muted', id: 'finish-models' }, 'Looking for finishing models…');
  const finishing = h('section', { class: 'panel stack', 'aria-label': 'Finish' },
    h('h3', {}, 'Finish'),
    h('div', { class: 'row wrap' },
      h('div', { class: 'field' }, h('label', { for: 'finish-target' }, 'Deliver as'), finishTarget),
      h('div', { class: 'row' }, finishPiece, h('label', { for: 'finish-piece', style: 'margin:0' }, 'Finish the piece when stitching'))),
    finishModels);
  container.append(final, finishing, h('section', { class: 'panel stack', 'aria-label': 'Shots' }, h('h3', {}, 'Shots'), grid));
  let shots = [];

  async function reload() {
    shots = await endpoints.shots.list(board.id);
    drawShots();
    await drawFinal();
  }

  function drawShots() {
    if (!shots.length) { clear(grid, h('div', { class: 'empty' }, 'No shots yet.')); return; }
    clear(grid, shots.map((shot) => {
      const take = shotVideo(shot);
      return h('article', { class: 'stack', dataset: { shotId: shot.id } },
        h('div', { class: 'row' }, h('strong', {}, `Shot ${shot.position + 1}`),
          h('span', { class: `badge ${shot.status}` }, shot.status), h('span', { class: 'spacer' }),
          h('span', { class: 'muted small' }, shot.transition)),
        attentionNote(shot),
        take
          ? h('video', { class: 'player', src: endpoints.assets.fileUrl(take.asset_id), controls: true, preload: 'metadata' })
          : h('div', { class: 'thumb player' }, 'Not generated yet'),
        h('div', { class: 'small muted ellipsis', title: shot.prompt }, shot.prompt),
        (shot.takes ?? []).map((t, i) => h('div', { class: 'take-line', dataset: { takeId: t.id } },
          h('button', {
            class: 'small', 'aria-pressed': String(t.id === take?.id), title: 'Use this take',
            onclick: () => choose(shot, t),
          }, `${t.id === take?.id ? '✓ ' : ''}Take ${i + 1}`),
          t.finished_from
            ? h('span', { class: 'small muted finish-of' },
              `${t.finish_target} finish of take ${shot.takes.findIndex((s) => s.id === t.finished_from) + 1}`)
            : h('button', { class: 'small finish-take', title: `Finish this take as ${finishTarget.value}`, onclick: (e) => finishTake(e.target, t) }, 'Finish'),
          takeReview(t.review),
          takeSplit(t.layout))));
    }));
  }

  /** Which models a finish uses, or what to install: shown under the target. */
  async function drawFinishModels() {
    const found = await endpoints.finishing.models();
    const usable = (kind) => found.models.filter((m) => m.kind === kind);
    const [upscaler] = usable('upscaler');
    const [interpolator] = usable('interpolator');
    clear(finishModels,
      h('div', {}, 'Upscaler: ', upscaler
        ? `${upscaler.file} (${upscaler.architecture} ×${upscaler.scale})`
        : h('span', { class: 'attention-note' }, found.upscaler_help)),
      h('div', {}, 'Frame interpolation: ', interpolator
        ? `${interpolator.file} (RIFE ${interpolator.version})`
        : h('span', { class: 'attention-note' }, found.interpolator_help)),
      found.models.filter((m) => m.kind === 'unusable').map((m) => h('div', {}, `${m.file}: not usable (${m.error})`)));
  }

  async function finishTake(button, take) {
    button.disabled = true;
    const job = await attempt('Finishing the take', () => runJob('finish', { take_id: take.id, target: finishTarget.value }, project.id));
    button.disabled = false;
    if (job) { toast(`Finished take ready (${job.result.width}×${job.result.height}, ${job.result.fps} fps).`, 'ok'); await attempt('Reloading shots', reload); }
  }

  async function choose(shot, take) {
    if (await attempt('Choosing the take', () => endpoints.shots.update(shot.id, { chosen_take_id: take.id }))) {
      await attempt('Reloading shots', reload);
    }
  }

  /** The newest finished stitch of this storyboard, from the job history. */
  async function latestStitch() {
    const list = await endpoints.jobs.list({ state: 'succeeded', limit: 500 });
    const stitches = list.filter((j) => j.kind === 'stitch' && j.project_id === project.id && j.result?.asset_id);
    return stitches.sort((a, b) => b.id - a.id)[0] ?? null;
  }

  async function drawFinal() {
    const job = await attempt('Loading the stitched video', latestStitch);
    clear(final, h('div', { class: 'row' }, h('h3', { class: 'grow' }, 'Final video')));
    if (!job) {
      final.append(h('div', { class: 'empty' }, 'Not stitched yet. Generate the shots, pick takes, then press “Stitch final video”.'));
      return;
    }
    const id = job.result.asset_id;
    const finish = job.result.finish;
    final.append(
      h('video', { class: 'player', id: 'final-video', src: endpoints.assets.fileUrl(id), controls: true, preload: 'metadata' }),
      h('div', { class: 'row' },
        h('span', { class: 'muted small grow' }, finish
          ? `Stitched by job #${job.id}, finished to ${finish.target} (${finish.width}×${finish.height}, ${finish.fps} fps)`
          : `Stitched by job #${job.id}`),
        h('a', { class: 'button primary', href: endpoints.assets.downloadUrl(id), download: `${project.name}.mp4` }, 'Download MP4')));
  }

  async function stitch() {
    const missing = shots.filter((s) => !shotVideo(s));
    if (missing.length) {
      toast(`Generate shot${missing.length > 1 ? 's' : ''} ${missing.map((s) => s.position + 1).join(', ')} first.`, 'error');
      return;
    }
    const attention = shots.filter((s) => s.attention);
    if (attention.length && !await confirmDialog('Stitch with shots that need attention?',
      `${attention.map((s) => `Shot ${s.position + 1}: ${s.attention}`).join('\n')}\n\n` +
      'Choosing a take of a shot settles it. Stitch the chosen takes as they are?', 'Stitch anyway')) return;
    stitchButton.disabled = true;
    const params = { storyboard_id: board.id };
    if (finishPiece.checked) params.finish = finishTarget.value;
    const job = await attempt('Stitching', () => runJob('stitch', params, project.id));
    stitchButton.disabled = false;
    if (job) { toast('Final video ready.', 'ok'); await attempt('Loading the stitched video', drawFinal); }
  }

  const unsubscribe = jobsFeed.subscribe((job) => {
    const makesTakes = jobsFeed.TAKE_KINDS.has(job?.kind) || job?.kind === 'finish';
    if (job?.project_id === project.id && makesTakes && job.state === 'succeeded') attempt('Reloading shots', reload);
  });
  await Promise.all([reload(), attempt('Loading the finishing models', drawFinishModels)]);
  return { reload: () => attempt('Reloading', reload), destroy: unsubscribe };
}
