// Left column of a project: the script (planned into shots by the planner plugin) and the
// character and style bible that the prompt expander uses to keep shots consistent.

import * as endpoints from './endpoints.js';
import { runJob } from './run-job.js';
import { attempt, confirmDialog, debounce, h, toast } from './ui.js';
import { clearDraft, loadDraft, saveDraft } from './drafts.js';

const EMPTY_STYLE = { look: '', lighting: '', negative: '' };
/** The Wan pipelines' defaults; the studio's `generate` job takes the same fields. */
const DEFAULT_RENDER = { width: 832, height: 480, steps: 50, guidance: 5 };

/**
 * The bible stored with a storyboard (its description, as JSON shaped like the plugin API's
 * project settings): {style: {look, lighting, negative}, characters: [{id, name, description}],
 * render: {width, height, steps, guidance}}. A plain-text description is taken as the look.
 */
export function loadBible(board) {
  let parsed = null;
  try { parsed = JSON.parse(board.description || '{}'); } catch { /* plain text */ }
  if (!parsed || typeof parsed !== 'object') {
    return { style: { ...EMPTY_STYLE, look: board.description ?? '' }, characters: [], render: { ...DEFAULT_RENDER } };
  }
  return { style: { ...EMPTY_STYLE, ...parsed.style }, characters: parsed.characters ?? [], render: { ...DEFAULT_RENDER, ...parsed.render } };
}

/** A stable id for a character, from its name (`Old Mara` → `old-mara`). */
function characterId(name) {
  return name.toLowerCase().normalize('NFKD').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

export function bibleEditor({ project, board, bible }, onPlanned) {
  const scriptKey = `script.${project.id}`;
  const bibleKey = `bible.${board.id}`;
  const script = h('textarea', {
    id: 'script', rows: 9, 'aria-label': 'Script',
    placeholder: 'Paste or write a script: scene headings (INT. KITCHEN – NIGHT), action lines, CHARACTER names and dialogue…',
    value: loadDraft(scriptKey) ?? '', oninput: () => saveDraft(scriptKey, script.value),
  });
  const planButton = h('button', { class: 'primary', id: 'plan', onclick: plan }, 'Plan storyboard');
  const planStatus = h('span', { class: 'small muted', 'aria-live': 'polite' });

  const restored = loadDraft(bibleKey);
  const current = restored ?? bible;
  const look = h('textarea', { rows: 2, id: 'style-look', value: current.style.look,
    placeholder: '35mm film, shallow depth of field, muted teal and amber', oninput: changed });
  const lighting = h('input', { id: 'style-lighting', value: current.style.lighting,
    placeholder: 'soft window light, warm practicals', oninput: changed });
  const negative = h('input', { id: 'style-negative', value: current.style.negative,
    placeholder: 'text, watermark, extra fingers', oninput: changed });
  const characters = h('div', { class: 'stack' });
  const renderInput = (key, attrs) => h('input', { id: `render-${key}`, type: 'number', required: true, oninput: changed, ...attrs });
  const render = {
    width: renderInput('width', { min: 16, max: 2048, step: 16 }),
    height: renderInput('height', { min: 16, max: 2048, step: 16 }),
    steps: renderInput('steps', { min: 1, max: 200, step: 1 }),
    guidance: renderInput('guidance', { min: 0, max: 20, step: 0.5 }),
  };
  const saveState = h('span', { class: 'small muted', 'aria-live': 'polite' });

  function characterRow(c = { name: '', description: '' }) {
    const name = h('input', { value: c.name, placeholder: 'Name', 'aria-label': 'Character name', oninput: changed });
    const description = h('textarea', { rows: 2, value: c.description, placeholder: 'Appearance, wardrobe, age…',
      'aria-label': 'Character description', oninput: changed });
    const row = h('div', { class: 'stack character' },
      h('div', { class: 'row' }, name,
        h('button', { class: 'ghost icon small', 'aria-label': 'Remove character', onclick: () => { row.remove(); changed(); } }, '✕')),
      description);
    row.read = () => ({ id: c.id || characterId(name.value), name: name.value.trim(), description: description.value.trim() });
    return row;
  }
  function setBible(b) {
    look.value = b.style.look;
    lighting.value = b.style.lighting;
    negative.value = b.style.negative;
    characters.replaceChildren(...b.characters.map(characterRow));
    for (const [key, field] of Object.entries(render)) field.value = b.render[key];
  }
  function read() {
    const number = (key) => (render[key].value === '' ? DEFAULT_RENDER[key] : Number(render[key].value));
    return {
      style: { look: look.value, lighting: lighting.value, negative: negative.value },
      characters: [...characters.children].map((r) => r.read()).filter((c) => c.name || c.description),
      render: { width: number('width'), height: number('height'), steps: number('steps'), guidance: number('guidance') },
    };
  }
  const persist = debounce(async () => {
    const value = read();
    const saved = await attempt('Saving the bible', () => endpoints.storyboards.update(board.id, { description: JSON.stringify(value) }));
    if (saved) {
      board.description = saved.description;
      clearDraft(bibleKey);
      saveState.textContent = 'Saved';
    } else {
      saveState.textContent = 'Not saved yet — kept as a draft';
    }
  }, 700);
  function changed() {
    saveDraft(bibleKey, read());
    saveState.textContent = 'Editing…';
    persist();
  }

  /**
   * Runs the planner. A storyboard whose shots already have takes is only re-planned when the
   * user agrees to replace its shots (the studio answers 409 otherwise); the takes' videos stay
   * in the asset library either way. Resolves undefined when the user keeps the shots.
   */
  async function planJob(text) {
    const params = { storyboard_id: board.id, script: text };
    try {
      return await runJob('plan', params, project.id);
    } catch (err) {
      if (err?.status !== 409) throw err;
      const replace = await confirmDialog('Replace the planned shots?',
        'Some shots already have generated takes. Planning again replaces every shot of this ' +
        'storyboard; the takes\' videos stay in the asset library.', 'Replace shots');
      if (!replace) return undefined;
      return runJob('plan', { ...params, replace: true }, project.id);
    }
  }

  async function plan() {
    const text = script.value.trim();
    if (!text) { toast('Write or paste a script first.', 'error'); script.focus(); return; }
    planButton.disabled = true;
    planStatus.textContent = 'Planning…';
    const job = await attempt('Planning the storyboard', () => planJob(text));
    planButton.disabled = false;
    planStatus.textContent = '';
    if (!job) return;
    const boards = await attempt('Reloading the storyboard', () => endpoints.storyboards.list(project.id));
    const updated = boards?.find((b) => b.id === board.id);
    if (updated) { Object.assign(board, updated); setBible(loadBible(updated)); clearDraft(bibleKey); }
    toast('Storyboard planned.', 'ok');
    onPlanned();
  }

  setBible(current);
  if (restored) { saveState.textContent = 'Restored unsaved edits'; persist(); }

  return h('div', { class: 'stack' },
    h('section', { class: 'panel stack', 'aria-label': 'Script' }, h('h3', {}, 'Script'), script,
      h('div', { class: 'row' }, planButton, planStatus)),
    h('section', { class: 'panel stack', 'aria-label': 'Bible' },
      h('div', { class: 'row' }, h('h3', { class: 'grow' }, 'Style & characters'), saveState),
      h('div', { class: 'field' }, h('label', { for: 'style-look' }, 'Look'), look),
      h('div', { class: 'field' }, h('label', { for: 'style-lighting' }, 'Lighting'), lighting),
      h('div', { class: 'field' }, h('label', { for: 'style-negative' }, 'Always avoid'), negative),
      h('label', {}, 'Characters'),
      characters,
      h('button', { class: 'small', onclick: () => { characters.append(characterRow()); changed(); } }, '+ Character'),
      h('h3', {}, 'Render'),
      h('div', { class: 'row wrap' },
        h('div', { class: 'field' }, h('label', { for: 'render-width' }, 'Width'), render.width),
        h('div', { class: 'field' }, h('label', { for: 'render-height' }, 'Height'), render.height),
        h('div', { class: 'field' }, h('label', { for: 'render-steps' }, 'Steps'), render.steps),
        h('div', { class: 'field' }, h('label', { for: 'render-guidance' }, 'Guidance'), render.guidance))));
}
