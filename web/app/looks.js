// A character's looks: reference portraits made by the image model (a `look` job), one of them
// chosen; the chosen look is what the shots' keyframes use to keep the character's face.

import * as endpoints from './endpoints.js';
import { runJob } from './run-job.js';
import { attempt, clear, h, toast } from './ui.js';

/** The "Look" area of character `characterId` of `board`; returns its element. */
export function lookArea({ project, board, characterId }) {
  const list = h('div', { class: 'takes looks' });
  const status = h('span', { class: 'small muted', 'aria-live': 'polite' });
  const button = h('button', { class: 'small', onclick: generate }, 'Generate look');

  async function draw() {
    const looks = (await attempt('Loading the looks', () => endpoints.looks.list(board.id)) ?? [])
      .filter((l) => l.character_id === characterId);
    button.textContent = looks.length ? 'Generate another look' : 'Generate look';
    clear(list, looks.map((look) => h('button', {
      class: 'take-pick look', 'aria-pressed': String(look.chosen), title: 'Use this look in keyframes',
      dataset: { lookId: look.id }, onclick: () => choose(look),
    },
    h('div', { class: 'thumb' }, h('img', { src: endpoints.assets.fileUrl(look.asset_id), alt: `Look of ${characterId}`, loading: 'lazy' })),
    h('span', { class: 'small' }, look.chosen ? '✓ chosen' : 'Use this look'))));
  }

  async function choose(look) {
    if (await attempt('Choosing the look', () => endpoints.looks.choose(look.id))) await draw();
  }

  async function generate() {
    button.disabled = true;
    status.textContent = 'Generating…';
    const job = await attempt('Generating a look',
      () => runJob('look', { storyboard_id: board.id, character_id: characterId }, project.id));
    button.disabled = false;
    status.textContent = '';
    if (!job) return;
    toast(`New look of ${characterId}.`, 'ok');
    await draw();
  }

  draw();
  return h('div', { class: 'field' }, h('label', {}, 'Look'), list, h('div', { class: 'row' }, button, status));
}
