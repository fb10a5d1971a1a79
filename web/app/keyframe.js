// A shot's keyframe: a still of its first moment made by the image model (a `keyframe` job, with
// the chosen looks of the characters in the shot), the start frame of its image-to-video takes.

import * as endpoints from './endpoints.js';
import { loadBible } from './bible.js';
import { runJob } from './run-job.js';
import { attempt, clear, h, toast } from './ui.js';

/**
 * The keyframe box of the shot editor; returns {el, refresh(shot)}. `models()` is the studio's
 * model list (for the note on text-to-video models), `save()` flushes the shot's edits before a
 * keyframe is made, `made()` reloads the shots after.
 */
export function keyframeBox({ project, board, models, save, made }) {
  const still = h('div', { class: 'keyframe' });
  const note = h('div', { class: 'small muted', role: 'note' });
  const button = h('button', { class: 'small', id: 'generate-keyframe', onclick: () => generate() });
  const status = h('span', { class: 'small muted', 'aria-live': 'polite' });
  let shot = null;

  function refresh(next) {
    shot = next;
    const drawn = String(shot.keyframe_asset_id ?? '');
    if (still.dataset.drawn !== drawn) {
      still.dataset.drawn = drawn;
      clear(still, shot.keyframe_asset_id
        ? h('a', { href: endpoints.assets.fileUrl(shot.keyframe_asset_id), target: '_blank', rel: 'noopener' },
          h('div', { class: 'thumb' }, h('img', { src: endpoints.assets.fileUrl(shot.keyframe_asset_id), alt: `Keyframe of shot ${shot.position + 1}` })))
        : h('span', { class: 'small muted' }, 'No keyframe yet.'));
    }
    button.textContent = shot.keyframe_asset_id ? 'Regenerate keyframe' : 'Generate keyframe';
    note.textContent = unusedBecause(shot) ?? '';
  }

  /** Why the shot's video model will not start from the keyframe, if it will not. */
  function unusedBecause(s) {
    const videos = models().filter((m) => m.role === 'video');
    const model = s.model ? videos.find((m) => m.name === s.model) : videos.length === 1 ? videos[0] : null;
    if (model?.capabilities?.start_image === 'unsupported') {
      return `${model.name} is a text-to-video model: its takes do not start from the keyframe.`;
    }
    return null;
  }

  async function generate() {
    const current = shot;
    button.disabled = true;
    status.textContent = 'Generating…';
    await save();
    const job = await attempt('Generating the keyframe',
      () => runJob('keyframe', { shot_id: current.id, render: loadBible(board).render }, project.id));
    button.disabled = false;
    status.textContent = '';
    if (!job) return;
    toast(`Keyframe of shot ${current.position + 1} ready.`, 'ok');
    await made();
  }

  const el = h('div', { class: 'field' }, h('label', {}, 'Keyframe'), still, note, h('div', { class: 'row' }, button, status));
  return { el, refresh };
}
