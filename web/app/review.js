// Review and finish: a seekable player per shot with its takes and their reviews to pick from,
// the shots that need the user's attention, the stitcher, and the stitched result with its
// download.

import * as endpoints from './endpoints.js';
import * as jobsFeed from './jobs-feed.js';
import { runJob } from './run-job.js';
import { attentionNote, shotVideo, takeReview } from './storyboard.js';
import { attempt, clear, confirmDialog, h, toast } from './ui.js';

export async function reviewScreen(container, { project, board, actions }) {
  const grid = h('div', { class: 'review-grid' });
  const final = h('section', { class: 'panel stack', 'aria-label': 'Stitched result' });
  const stitchButton = h('button', { class: 'primary', id: 'stitch', onclick: stitch }, 'Stitch final video');
  clear(actions, stitchButton);
  container.append(final, h('section', { class: 'panel stack', 'aria-label': 'Shots' }, h('h3', {}, 'Shots'), grid));
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
          takeReview(t.review))));
    }));
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
    final.append(
      h('video', { class: 'player', id: 'final-video', src: endpoints.assets.fileUrl(id), controls: true, preload: 'metadata' }),
      h('div', { class: 'row' },
        h('span', { class: 'muted small grow' }, `Stitched by job #${job.id}`),
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
    const job = await attempt('Stitching', () => runJob('stitch', { storyboard_id: board.id }, project.id));
    stitchButton.disabled = false;
    if (job) { toast('Final video ready.', 'ok'); await attempt('Loading the stitched video', drawFinal); }
  }

  const unsubscribe = jobsFeed.subscribe((job) => {
    if (job?.project_id === project.id && jobsFeed.TAKE_KINDS.has(job.kind) && job.state === 'succeeded') attempt('Reloading shots', reload);
  });
  await reload();
  return { reload: () => attempt('Reloading', reload), destroy: unsubscribe };
}
