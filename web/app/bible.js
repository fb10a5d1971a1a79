// Left column of a project: a brief or a script (planned into shots by the planner plugin), the
// character and style bible that the prompt expander uses to keep shots consistent (with each
// character's looks and LoRAs), and the render settings with the project's attempt limit for the
// take reviewer, its keyframes setting and its LoRAs.

import * as endpoints from './endpoints.js';
import { lookArea } from './looks.js';
import { loraPicker } from './loras.js';
import { runJob } from './run-job.js';
import { attempt, confirmDialog, debounce, h, toast } from './ui.js';
import { clearDraft, loadDraft, saveDraft } from './drafts.js';

const EMPTY_STYLE = { look: '', lighting: '', negative: '' };
/** The Wan pipelines' defaults; the studio's `generate` job takes the same fields. */
const DEFAULT_RENDER = { width: 832, height: 480, steps: 50, guidance: 5 };

/**
 * The bible stored with a storyboard (its description, as JSON shaped like the plugin API's
 * project settings): {style: {look, lighting, negative}, characters: [{id, name, description}],
 * render: {width, height, steps, guidance}}; `rest` holds its other keys, written back as they
 * are (as the studio's own bible reader keeps them).
 *
 * A description that is not such JSON was written as the storyboard's description (through the
 * API or the CLI), not as a look: it is not shown as the look, and the first bible save keeps
 * it as the bible's `description` key, so the text survives and never leaks into prompts.
 */
export function loadBible(board) {
  let parsed = null;
  try { parsed = JSON.parse(board.description || '{}'); } catch { /* plain text */ }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
    return { style: { ...EMPTY_STYLE }, characters: [], render: { ...DEFAULT_RENDER }, rest: { description: board.description } };
  }
  const { style, characters, render, ...rest } = parsed;
  return { style: { ...EMPTY_STYLE, ...style }, characters: characters ?? [], render: { ...DEFAULT_RENDER, ...render }, rest };
}

/** A stable id for a character, from its name (`Old Mara` → `old-mara`). */
function characterId(name) {
  return name.toLowerCase().normalize('NFKD').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

export function bibleEditor({ project, board, bible }, onPlanned) {
  const briefKey = `brief.${project.id}`;
  const scriptKey = `script.${project.id}`;
  const bibleKey = `bible.${board.id}`;
  const attemptsKey = `attempts.${project.id}`;
  const brief = h('textarea', {
    id: 'brief', rows: 3, 'aria-label': 'Brief',
    placeholder: 'A 30-second ad for noise-cancelling headphones, two scenes, one character',
    value: loadDraft(briefKey) ?? '', oninput: () => saveDraft(briefKey, brief.value),
  });
  const script = h('textarea', {
    id: 'script', rows: 9, 'aria-label': 'Script',
    placeholder: 'Paste or write a script: scene headings (INT. KITCHEN – NIGHT), action lines, CHARACTER names and dialogue…',
    value: loadDraft(scriptKey) ?? '', oninput: () => saveDraft(scriptKey, script.value),
  });
  const briefButton = h('button', { class: 'primary', id: 'plan-brief', onclick: () => plan(brief, briefStatus) }, 'Plan from brief');
  const briefStatus = h('span', { class: 'small muted', 'aria-live': 'polite' });
  const planButton = h('button', { class: 'primary', id: 'plan', onclick: () => plan(script, planStatus) }, 'Plan storyboard');
  const planStatus = h('span', { class: 'small muted', 'aria-live': 'polite' });

  const restored = loadDraft(bibleKey);
  const current = restored ?? bible;
  // Bible keys this editor does not show (see loadBible), carried into every save.
  let rest = bible.rest;
  const look = h('textarea', { rows: 2, id: 'style-look', value: current.style.look,
    placeholder: '35mm film, shallow depth of field, muted teal and amber', oninput: changed });
  const lighting = h('input', { id: 'style-lighting', value: current.style.lighting,
    placeholder: 'soft window light, warm practicals', oninput: changed });
  const negative = h('input', { id: 'style-negative', value: current.style.negative,
    placeholder: 'text, watermark, extra fingers', oninput: changed });
  const characters = h('div', { class: 'stack' });
  const renderInput = (key, attrs) => h('input', { id: `render-${key}`, type: 'number', required: true, oninput: changed, ...attrs });
  // A distilled model's schedule (the studio's presets) sets steps and guidance itself.
  const preset = h('select', { id: 'render-preset', onchange: () => { presetChanged(); changed(); } },
    h('option', { value: '' }, 'Standard (steps and guidance below)'));
  // Step caching skips transformer evaluations whose output barely changes (faster, slightly softer).
  const cache = h('select', { id: 'render-cache', onchange: changed },
    h('option', { value: '' }, 'Off'),
    h('option', { value: 'teacache' }, 'TeaCache'),
    h('option', { value: 'magcache' }, 'MagCache'),
    h('option', { value: 'easycache' }, 'EasyCache'));
  // Quantized block weights: FP8 about half the video model's memory, NVFP4 a little over a
  // quarter, each for a little fidelity.
  const quant = h('select', { id: 'render-quant', onchange: changed },
    h('option', { value: '' }, 'As stored'),
    h('option', { value: 'fp8' }, 'FP8'),
    h('option', { value: 'nvfp4' }, 'NVFP4'));
  // Self-attention in float8 (Wan on Hopper cards): its two products at twice the rate.
  const attention = h('select', { id: 'render-attention', onchange: changed },
    h('option', { value: '' }, 'Exact'),
    h('option', { value: 'fp8' }, 'FP8'));
  // One shot's generation split across several of the studio's cards, taken together (and
  // CFG parallel: half of them compute the unconditional guidance branch).
  const splitCards = h('input', { id: 'render-split-cards', type: 'number', min: 1, max: 16, step: 1, oninput: changed });
  const cfgParallel = h('input', { id: 'render-cfg-parallel', type: 'checkbox', style: 'width:auto', onchange: changed });
  const render = {
    width: renderInput('width', { min: 16, max: 2048, step: 16 }),
    height: renderInput('height', { min: 16, max: 2048, step: 16 }),
    steps: renderInput('steps', { min: 1, max: 200, step: 1 }),
    guidance: renderInput('guidance', { min: 0, max: 20, step: 0.5 }),
  };
  const restoredAttempts = loadDraft(attemptsKey);
  const maxAttempts = h('input', { id: 'max-attempts', type: 'number', min: 1, max: 10, step: 1, required: true,
    value: restoredAttempts ?? project.max_attempts ?? 3, oninput: attemptsChanged });
  // Keyframes are the project's setting; automatic (null) until the user chooses.
  const keyframes = h('select', { id: 'keyframes', onchange: keyframesChanged },
    ...(project.keyframes === null || project.keyframes === undefined
      ? [h('option', { value: '' }, 'Automatic (image + image-to-video models installed)')] : []),
    h('option', { value: 'on' }, 'On: looks, keyframes, then image-to-video'),
    h('option', { value: 'off' }, 'Off'));
  keyframes.value = project.keyframes === true ? 'on' : project.keyframes === false ? 'off' : '';
  // The image model of looks and keyframes: the studio's choice (FLUX.2 [klein]) unless picked.
  const imageModel = h('select', { id: 'render-image-model', onchange: changed },
    h('option', { value: '' }, 'Default (FLUX.2 [klein] when installed)'));
  const saveState = h('span', { class: 'small muted', 'aria-live': 'polite' });

  function characterRow(c = { name: '', description: '' }) {
    const name = h('input', { value: c.name, placeholder: 'Name', 'aria-label': 'Character name', oninput: changed });
    const description = h('textarea', { rows: 2, value: c.description, placeholder: 'Appearance, wardrobe, age…',
      'aria-label': 'Character description', oninput: changed });
    const row = h('div', { class: 'stack character' },
      h('div', { class: 'row' }, name,
        h('button', { class: 'ghost icon small', 'aria-label': 'Remove character', onclick: () => { row.remove(); changed(); } }, '✕')),
      description,
      // Looks and LoRAs belong to a saved character (the bible's id); a new one gets them once saved.
      c.id ? lookArea({ project, board, characterId: c.id }) : null,
      c.id ? loraPicker({ storyboard: board.id, character: c.id }, 'Character LoRAs (shots that show them, looks)') : null);
    row.read = () => ({ id: c.id || characterId(name.value), name: name.value.trim(), description: description.value.trim() });
    return row;
  }
  function setBible(b) {
    look.value = b.style.look;
    lighting.value = b.style.lighting;
    negative.value = b.style.negative;
    characters.replaceChildren(...b.characters.map(characterRow));
    for (const [key, field] of Object.entries(render)) field.value = b.render[key];
    setPreset(b.render.preset ?? '');
    const method = b.render.cache ?? '';
    // A threshold set elsewhere (`teacache:0.1`) stays selectable as it is.
    if (method && ![...cache.options].some((o) => o.value === method)) cache.append(h('option', { value: method }, method));
    cache.value = method;
    quant.value = b.render.quant ?? '';
    attention.value = b.render.attention ?? '';
    splitCards.value = b.render.split_cards ?? 1;
    cfgParallel.checked = b.render.cfg_parallel ?? false;
    setImageModel(b.render.image_model ?? '');
  }
  /** Selects `name`, adding it as an option until the model list arrives. */
  function setImageModel(name) {
    if (name && ![...imageModel.options].some((o) => o.value === name)) imageModel.append(h('option', { value: name }, name));
    imageModel.value = name;
  }
  /** Selects `name`, adding it as an option until the list arrives (or if the server lost it). */
  function setPreset(name) {
    if (name && ![...preset.options].some((o) => o.value === name)) preset.append(h('option', { value: name }, name));
    preset.value = name;
    presetChanged();
  }
  function presetChanged() {
    render.steps.disabled = render.guidance.disabled = preset.value !== '';
  }
  function read() {
    const number = (key) => (render[key].value === '' ? DEFAULT_RENDER[key] : Number(render[key].value));
    return {
      style: { look: look.value, lighting: lighting.value, negative: negative.value },
      characters: [...characters.children].map((r) => r.read()).filter((c) => c.name || c.description),
      render: {
        width: number('width'), height: number('height'), steps: number('steps'), guidance: number('guidance'),
        ...(preset.value ? { preset: preset.value } : {}),
        ...(cache.value ? { cache: cache.value } : {}),
        ...(quant.value ? { quant: quant.value } : {}),
        ...(attention.value ? { attention: attention.value } : {}),
        ...(Number(splitCards.value) > 1 ? { split_cards: Number(splitCards.value) } : {}),
        ...(cfgParallel.checked ? { cfg_parallel: true } : {}),
        ...(imageModel.value ? { image_model: imageModel.value } : {}),
      },
    };
  }
  const persist = debounce(async () => {
    const value = read();
    const saved = await attempt('Saving the bible', () => endpoints.storyboards.update(board.id, { description: JSON.stringify({ ...rest, ...value }) }));
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

  // The attempt limit is the project's (PATCH /api/projects/{id}); the draft holds the typed text.
  const persistAttempts = debounce(async () => {
    const typed = maxAttempts.value;
    const value = Number(typed);
    if (!Number.isInteger(value) || value < 1 || value > 10) {
      saveState.textContent = 'Attempts must be a whole number from 1 to 10';
      return;
    }
    const saved = await attempt('Saving the attempt limit', () => endpoints.projects.update(project.id, { max_attempts: value }));
    if (saved) {
      project.max_attempts = saved.max_attempts;
      if (loadDraft(attemptsKey) === typed) clearDraft(attemptsKey);
      saveState.textContent = 'Saved';
    } else {
      saveState.textContent = 'Not saved yet — kept as a draft';
    }
  }, 700);
  async function keyframesChanged() {
    if (!keyframes.value) return;
    const saved = await attempt('Saving the keyframes setting',
      () => endpoints.projects.update(project.id, { keyframes: keyframes.value === 'on' }));
    if (saved) {
      project.keyframes = saved.keyframes;
      keyframes.querySelector('option[value=""]')?.remove();
      saveState.textContent = 'Saved';
    }
  }
  function attemptsChanged() {
    saveDraft(attemptsKey, maxAttempts.value);
    saveState.textContent = 'Editing…';
    persistAttempts();
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

  /** Plans from `source` (the brief or the script box); the text stays in its box either way. */
  async function plan(source, status) {
    const text = source.value.trim();
    if (!text) {
      toast(source === brief ? 'Write a brief first.' : 'Write or paste a script first.', 'error');
      source.focus();
      return;
    }
    briefButton.disabled = true;
    planButton.disabled = true;
    status.textContent = 'Planning…';
    const job = await attempt(source === brief ? 'Planning from the brief' : 'Planning the storyboard', () => planJob(text));
    briefButton.disabled = false;
    planButton.disabled = false;
    status.textContent = '';
    if (!job) return;
    const boards = await attempt('Reloading the storyboard', () => endpoints.storyboards.list(project.id));
    const updated = boards?.find((b) => b.id === board.id);
    if (updated) {
      Object.assign(board, updated);
      const planned = loadBible(updated);
      rest = planned.rest;
      setBible(planned);
      clearDraft(bibleKey);
    }
    toast('Storyboard planned.', 'ok');
    onPlanned();
  }

  setBible(current);
  endpoints.presets.list().then((list) => {
    const chosen = preset.value;
    preset.replaceChildren(preset.options[0],
      ...list.map((p) => h('option', { value: p.name, title: p.description }, `${p.name} (${p.steps} steps)`)));
    setPreset(chosen);
  }, () => { /* the standard schedule still works; the list comes with the next visit */ });
  endpoints.models.list().then((list) => {
    const chosen = imageModel.value;
    imageModel.replaceChildren(imageModel.options[0],
      ...list.filter((m) => m.role === 'image').map((m) => h('option', { value: m.name }, m.name)));
    setImageModel(chosen);
  }, () => { /* the default image model still works */ });
  if (restored) { saveState.textContent = 'Restored unsaved edits'; persist(); }
  if (restoredAttempts !== null) { saveState.textContent = 'Restored unsaved edits'; persistAttempts(); }

  return h('div', { class: 'stack' },
    h('section', { class: 'panel stack', 'aria-label': 'Brief' }, h('h3', {}, 'Brief'),
      h('div', { class: 'small muted' }, 'Describe the video in plain words; the planner writes the screenplay with the language model.'),
      brief,
      h('div', { class: 'row' }, briefButton, briefStatus)),
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
        h('div', { class: 'field' }, h('label', { for: 'render-guidance' }, 'Guidance'), render.guidance),
        h('div', { class: 'field' }, h('label', { for: 'render-preset' }, 'Schedule'), preset),
        h('div', { class: 'field' }, h('label', { for: 'render-cache', title: 'Skips denoising steps that barely change the picture' },
          'Step cache'), cache),
        h('div', { class: 'field' }, h('label', { for: 'render-quant', title: 'The video model\'s weights in FP8: about half the memory' },
          'Weights'), quant),
        h('div', { class: 'field' }, h('label', { for: 'render-attention', title: 'The video model\'s attention in FP8 (Wan on Hopper cards): the 14B forward about 10% faster, 1% off' },
          'Attention'), attention),
        h('div', { class: 'field' }, h('label', { for: 'render-split-cards', title: 'Split each shot\'s generation across this many of the studio\'s cards' },
          'Cards per shot'), splitCards),
        h('div', { class: 'field' }, h('label', { for: 'render-cfg-parallel', title: 'Half of the cards compute the guidance\'s unconditional pass (Wan, an even card count)' },
          'CFG parallel'), cfgParallel),
        h('div', { class: 'field' }, h('label', { for: 'max-attempts', title: 'How many takes the reviewer may ask for per shot' },
          'Attempts (1–10)'), maxAttempts)),
      h('div', { class: 'row wrap' },
        h('div', { class: 'field' }, h('label', { for: 'keyframes', title: 'Start every shot from a still of its first moment, with the characters\' chosen looks' },
          'Keyframes'), keyframes),
        h('div', { class: 'field' }, h('label', { for: 'render-image-model' }, 'Image model (looks, keyframes)'), imageModel)),
      loraPicker({ project: project.id }, 'Project LoRAs (every shot)')));
}
