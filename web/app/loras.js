// LoRA picker: the LoRA assets chosen for a project (every shot), a bible character (the shots
// that show them, and their looks) or one shot, each with a strength, and for Wan 2.2's two
// experts an optional second strength (the low-noise expert's). The same LoRA chosen at two
// levels: the more specific choice wins (shot over character over project). LoRA files are
// imported in the asset library like other files (`.safetensors`).

import * as endpoints from './endpoints.js';
import { attempt, debounce, h } from './ui.js';

/**
 * The picker for `scope` (`{project}`, `{storyboard, character}` or `{shot}`), labelled `label`;
 * returns its element. Edits are saved (the whole list, PUT) shortly after they stop.
 */
export function loraPicker(scope, label = 'LoRAs') {
  const rows = h('div', { class: 'stack lora-list' });
  const add = h('select', { 'aria-label': `Add a LoRA to ${label}`, onchange: () => { addChoice(Number(add.value)); add.value = ''; } },
    h('option', { value: '' }, '+ LoRA…'));
  const status = h('span', { class: 'small muted', 'aria-live': 'polite' });
  // For a shot: what its generation applies, with what it inherits (the precedence rule's result).
  const applied = scope.shot !== undefined ? h('div', { class: 'small muted lora-applied' }) : null;
  let chosen = [];
  let library = [];

  const save = debounce(async () => {
    const body = chosen.map(({ asset_id, strength, strength_2 }) =>
      (strength_2 === null || strength_2 === undefined ? { asset_id, strength } : { asset_id, strength, strength_2 }));
    const saved = await attempt(`Saving the ${label}`, () => endpoints.loras.set(scope, body));
    if (saved) {
      chosen = saved;
      status.textContent = 'Saved';
      showApplied();
    } else {
      status.textContent = 'Not saved';
    }
  }, 600);

  function changed() {
    status.textContent = 'Editing…';
    save();
  }

  async function showApplied() {
    if (!applied) return;
    const list = await attempt('Loading the applied LoRAs', () => endpoints.loras.applied(scope.shot));
    if (!list) return;
    applied.textContent = list.length
      ? `Applied to this shot: ${list.map((l) => `${l.name} ${l.strength}${l.strength_2 === undefined ? '' : `,${l.strength_2}`} (${l.from})`).join(' · ')}`
      : 'No LoRA applies to this shot.';
  }

  function addChoice(assetId) {
    const asset = library.find((a) => a.id === assetId);
    if (!asset || chosen.some((c) => c.asset_id === assetId)) return;
    chosen.push({ asset_id: asset.id, name: asset.original_name, strength: 1, target: asset.lora?.target ?? 'video' });
    draw();
    changed();
  }

  function strengthInput(choice, key, title) {
    const input = h('input', { type: 'number', step: 0.05, min: -10, max: 10, class: 'strength', title,
      'aria-label': `${title} of ${choice.name}`, value: choice[key] ?? '',
      placeholder: key === 'strength_2' ? 'same' : '1' });
    input.addEventListener('input', () => {
      const value = input.value === '' ? (key === 'strength' ? 1 : null) : Number(input.value);
      if (value !== null && !Number.isFinite(value)) return;
      choice[key] = value;
      changed();
    });
    return input;
  }

  function draw() {
    rows.replaceChildren(...chosen.map((choice) => h('div', { class: 'row lora', dataset: { assetId: choice.asset_id } },
      h('span', { class: 'grow', title: choice.target === 'image' ? 'Adapts the image model (looks, keyframes)' : 'Adapts the video model' },
        `${choice.name}${choice.target === 'image' ? ' (image)' : ''}`),
      strengthInput(choice, 'strength', 'Strength'),
      strengthInput(choice, 'strength_2', 'Low-noise expert strength (Wan 2.2)'),
      h('button', { class: 'ghost icon small', 'aria-label': `Remove ${choice.name}`, onclick: () => {
        chosen = chosen.filter((c) => c !== choice);
        draw();
        changed();
      } }, '✕'))));
    add.replaceChildren(add.options[0] ?? h('option', { value: '' }, '+ LoRA…'),
      ...library.filter((a) => !chosen.some((c) => c.asset_id === a.id))
        .map((a) => h('option', { value: a.id }, `${a.original_name}${a.lora?.family ? ` — ${a.lora.family}` : ''}`)));
    add.disabled = add.options.length <= 1;
    add.title = add.disabled ? 'Import LoRA files (.safetensors) in the asset library first' : '';
  }

  Promise.all([
    attempt(`Loading the ${label}`, () => endpoints.loras.list(scope)),
    attempt('Loading the LoRA library', () => endpoints.assets.search({ kind: 'lora', limit: 1000 })),
  ]).then(([list, hits]) => {
    chosen = list ?? [];
    library = hits ?? [];
    draw();
    showApplied();
  });
  draw();
  return h('div', { class: 'field lora-picker' }, h('label', {}, label), rows, h('div', { class: 'row' }, add, status), applied);
}
