// Asset library: search with filters and infinite scroll, drag-and-drop (or picker) upload,
// tag and caption editing, and "use as reference" for a shot.

import * as endpoints from '../endpoints.js';
import { assetBrowser, assetThumb } from '../asset-browser.js';
import { attempt, formatBytes, formatDate, h, modal, toast } from '../ui.js';

export async function render(container) {
  const projects = (await attempt('Loading projects', endpoints.projects.list)) ?? [];
  const browser = assetBrowser({ projects, onPick: (asset) => openAsset(asset, projects, browser) });
  const fileInput = h('input', { type: 'file', multiple: true, hidden: true, accept: 'image/*,video/*,audio/*,.safetensors',
    onchange: () => upload([...fileInput.files]) });
  const dropzone = h('div', { class: 'dropzone', tabindex: 0, role: 'button', 'aria-label': 'Upload files',
    onclick: () => fileInput.click(),
    onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); fileInput.click(); } } },
  'Drop images, videos, audio or LoRAs (.safetensors) here, or press to choose files.');

  for (const type of ['dragenter', 'dragover']) {
    dropzone.addEventListener(type, (e) => { e.preventDefault(); dropzone.classList.add('over'); });
  }
  dropzone.addEventListener('dragleave', () => dropzone.classList.remove('over'));
  dropzone.addEventListener('drop', (e) => {
    e.preventDefault();
    dropzone.classList.remove('over');
    upload([...e.dataTransfer.files]);
  });

  const uploadProject = h('select', { 'aria-label': 'Project for uploads' }, h('option', { value: '' }, 'No project'),
    projects.map((p) => h('option', { value: p.id }, p.name)));
  const uploadTags = h('input', { placeholder: 'tags, comma separated', 'aria-label': 'Tags for uploads' });
  const uploadCaption = h('input', { placeholder: 'caption', 'aria-label': 'Caption for uploads' });

  async function upload(files) {
    let added = 0;
    const fields = { project_id: uploadProject.value, tags: uploadTags.value, caption: uploadCaption.value };
    for (const file of files) {
      dropzone.textContent = `Uploading ${file.name}…`;
      if (await attempt(`Uploading ${file.name}`, () => endpoints.assets.upload(file, fields))) added += 1;
    }
    dropzone.textContent = 'Drop images, videos, audio or LoRAs (.safetensors) here, or press to choose files.';
    fileInput.value = '';
    if (added) {
      toast(`Added ${added} file${added > 1 ? 's' : ''} to the library.`, 'ok');
      browser.refresh();
    }
  }

  container.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Asset library')),
    h('div', { class: 'stack' },
      h('div', { class: 'row' }, h('span', { class: 'small muted' }, 'New uploads:'), uploadProject, uploadTags, uploadCaption),
      dropzone, fileInput, browser.el),
  );
  browser.focus();
  return () => browser.destroy();
}

/** The detail dialog: preview, metadata, caption and tags, and "use as reference". */
async function openAsset(asset, projects, browser) {
  const full = (await attempt('Loading the asset', () => endpoints.assets.get(asset.id))) ?? asset;
  const caption = h('input', { value: full.caption ?? '', 'aria-label': 'Caption' });
  const tags = h('input', { value: (full.tags ?? []).join(', '), 'aria-label': 'Tags' });
  const preview = full.kind === 'video'
    ? h('video', { class: 'player', src: endpoints.assets.fileUrl(full.id), controls: true, preload: 'metadata' })
    : full.kind === 'audio' ? h('audio', { src: endpoints.assets.fileUrl(full.id), controls: true }) : assetThumb(full);
  const saved = await modal((close) => h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      const updated = await attempt('Saving caption and tags', () => endpoints.assets.update(full.id, {
        caption: caption.value.trim(),
        tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean),
      }));
      if (updated) close(true);
    },
  },
  h('h2', {}, full.caption || full.original_name || `Asset #${full.id}`),
  h('div', { class: 'asset-detail' },
    h('div', {}, preview),
    h('div', { class: 'stack' },
      h('div', { class: 'field' }, h('label', {}, 'Caption'), caption),
      h('div', { class: 'field' }, h('label', {}, 'Tags (comma separated)'), tags),
      h('div', { class: 'small muted' },
        `${full.kind} · ${full.mime ?? ''} · ${formatBytes(full.size_bytes)}`,
        full.width ? ` · ${full.width}×${full.height}` : '', h('br'),
        `Added ${formatDate(full.created_at)}`,
        full.project_id ? ` · project ${projects.find((p) => p.id === full.project_id)?.name ?? full.project_id}` : '',
        full.model ? h('div', {}, `Model ${full.model}`) : null,
        full.lora ? h('div', {}, `LoRA · ${full.lora.format} · ${full.lora.modules} modules · `,
          `${full.lora.family ?? 'family not told by its keys'} · adapts the ${full.lora.target} model`) : null,
        full.kind === 'lora' ? h('div', {}, `SHA-256 ${full.sha256}`) : null,
        full.prompt ? h('div', {}, `Prompt: ${full.prompt}`) : null),
      h('a', { class: 'button small', href: endpoints.assets.downloadUrl(full.id), download: '' }, 'Download'),
      // Refused (with where) while the asset is in use: a chosen LoRA, a take, a reference, a look.
      h('button', { type: 'button', class: 'small danger', onclick: async () => {
        if (await attempt('Deleting the asset', () => endpoints.assets.remove(full.id)) !== undefined) close('deleted');
      } }, 'Delete'),
      full.kind === 'image'
        ? h('button', { type: 'button', class: 'small', onclick: () => { close(false); useAsReference(full, projects); } },
          'Use as shot reference…')
        : null)),
  h('div', { class: 'buttons' },
    h('button', { type: 'button', onclick: () => close(false) }, 'Close'),
    h('button', { type: 'submit', class: 'primary' }, 'Save'))), { wide: true });
  if (saved) {
    toast(saved === 'deleted' ? 'Deleted.' : 'Saved.', 'ok');
    browser.refresh();
  }
}

/** Lets the user pick a project and shot, then appends the asset to the shot's references. */
async function useAsReference(asset, projects) {
  if (!projects.length) { toast('Create a project with shots first.', 'error'); return; }
  const projectSelect = h('select', { 'aria-label': 'Project' }, projects.map((p) => h('option', { value: p.id }, p.name)));
  const shotSelect = h('select', { 'aria-label': 'Shot' });
  let storyboardShots = [];
  async function loadShots() {
    const boards = (await attempt('Loading storyboards', () => endpoints.storyboards.list(projectSelect.value))) ?? [];
    storyboardShots = boards.length ? ((await attempt('Loading shots', () => endpoints.shots.list(boards[0].id))) ?? []) : [];
    shotSelect.replaceChildren(...storyboardShots.map((s) => h('option', { value: s.id },
      `Shot ${s.position + 1}: ${s.prompt.slice(0, 60) || '(no prompt)'}`)));
  }
  projectSelect.addEventListener('change', loadShots);
  await loadShots();
  const shotId = await modal((close) => h('form', { onsubmit: (e) => { e.preventDefault(); close(Number(shotSelect.value)); } },
    h('h2', {}, 'Use as reference'),
    h('div', { class: 'stack' },
      h('div', { class: 'field' }, h('label', {}, 'Project'), projectSelect),
      h('div', { class: 'field' }, h('label', {}, 'Shot'), shotSelect)),
    h('div', { class: 'buttons' },
      h('button', { type: 'button', onclick: () => close(undefined) }, 'Cancel'),
      h('button', { type: 'submit', class: 'primary' }, 'Attach'))));
  const shot = storyboardShots.find((s) => s.id === shotId);
  if (!shot) return;
  const references = [...new Set([...(shot.references ?? []), asset.id])];
  if (await attempt('Attaching the reference', () => endpoints.shots.update(shot.id, { references }))) {
    toast(`Attached to shot ${shot.position + 1}.`, 'ok');
  }
}
