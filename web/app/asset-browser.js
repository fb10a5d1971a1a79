// Searchable, infinitely scrolling asset grid with filters (kind, project, model, tags, date).
// Pages are fetched from the server as the sentinel scrolls into view; tiles use lazy images
// and `content-visibility` so that even tens of thousands of loaded tiles stay cheap.

import * as endpoints from './endpoints.js';
import { attempt, clear, debounce, formatDate, h } from './ui.js';

const PAGE = 60;

/** A tile's preview: the image itself, or the first frame of a video. */
export function assetThumb(asset) {
  const url = endpoints.assets.fileUrl(asset.id);
  if (asset.kind === 'image') return h('div', { class: 'thumb' }, h('img', { src: url, alt: asset.caption || asset.original_name || '', loading: 'lazy' }));
  if (asset.kind === 'video') return h('div', { class: 'thumb' }, h('video', { src: `${url}#t=0.05`, preload: 'metadata', muted: true, 'aria-label': asset.caption || 'video' }));
  if (asset.kind === 'lora') return h('div', { class: 'thumb lora', title: asset.lora?.family ?? 'LoRA' }, 'LoRA');
  return h('div', { class: 'thumb' }, '♪');
}

/**
 * Builds the browser. `onPick(asset)` runs when a tile is activated. `fixed` filters (e.g.
 * {kind: 'image'}) are applied and their controls hidden. Returns {el, refresh, destroy}.
 */
export function assetBrowser({ onPick, fixed = {}, projects = [] } = {}) {
  const state = { q: '', kind: '', project: '', model: '', tags: '', from: '', to: '', ...fixed };
  const search = h('input', { type: 'search', placeholder: 'Search prompts, captions, tags…', 'aria-label': 'Search assets', class: 'asset-search' });
  const field = (label, control) => h('div', { class: 'field' }, h('label', {}, label), control);
  const kind = h('select', { 'aria-label': 'Kind' },
    h('option', { value: '' }, 'Any kind'), h('option', { value: 'image' }, 'Images'),
    h('option', { value: 'video' }, 'Videos'), h('option', { value: 'audio' }, 'Audio'),
    h('option', { value: 'lora' }, 'LoRAs'));
  const project = h('select', { 'aria-label': 'Project' }, h('option', { value: '' }, 'Any project'),
    projects.map((p) => h('option', { value: p.id }, p.name)));
  const model = h('input', { placeholder: 'e.g. wan2.1-t2v-1.3b', 'aria-label': 'Model' });
  const tags = h('input', { placeholder: 'comma,separated', 'aria-label': 'Tags' });
  const from = h('input', { type: 'date', 'aria-label': 'From date' });
  const to = h('input', { type: 'date', 'aria-label': 'To date' });
  const controls = { kind, project, model, tags, from, to };
  const filters = h('div', { class: 'stack panel' }, h('h3', {}, 'Filters'),
    fixed.kind ? null : field('Kind', kind), fixed.project ? null : field('Project', project),
    field('Model', model), field('Tags', tags), h('div', { class: 'grid-2' }, field('From', from), field('To', to)));
  const count = h('span', { class: 'muted small', 'aria-live': 'polite' });
  const grid = h('div', { class: 'asset-grid' });
  const sentinel = h('div', { class: 'sentinel' });
  const results = h('div', { class: 'asset-results stack' }, h('div', { class: 'row' }, search, count), grid, sentinel);
  const el = h('div', { class: 'asset-layout' }, filters, results);

  let offset = 0;
  let loading = null;
  let exhausted = false;
  let generation = 0;

  const params = () => ({
    q: state.q, kind: state.kind, project_id: state.project, model: state.model,
    tags: state.tags.split(',').map((t) => t.trim()).filter(Boolean).join(',') || undefined,
    since: state.from, until: state.to, limit: PAGE, offset,
  });

  async function loadMore() {
    if (loading || exhausted) return;
    const mine = generation;
    sentinel.textContent = 'Loading…';
    loading = attempt('Searching assets', () => endpoints.assets.search(params()));
    const page = await loading;
    loading = null;
    if (mine !== generation) return;
    if (!page) { sentinel.textContent = 'Search failed.'; exhausted = true; return; }
    const hits = page;
    offset += hits.length;
    exhausted = hits.length < PAGE;
    grid.append(...hits.map(tile));
    count.textContent = `${offset.toLocaleString()}${exhausted ? '' : '+'} shown`;
    sentinel.textContent = exhausted ? (offset ? 'End of results' : 'No assets match.') : '';
    // Keep filling while the sentinel is still on screen (large screens, short pages).
    if (!exhausted && sentinel.getBoundingClientRect().top < window.innerHeight + 400) loadMore();
  }

  function tile(asset) {
    const name = asset.caption || asset.original_name || `asset #${asset.id}`;
    return h('button', {
      class: 'asset-tile', type: 'button', dataset: { assetId: asset.id }, title: asset.prompt || name,
      onclick: () => onPick?.(asset),
    }, assetThumb(asset),
    h('div', { class: 'caption ellipsis' }, name),
    h('div', { class: 'tags ellipsis' }, (asset.tags ?? []).map((t) => `#${t}`).join(' ') || formatDate(asset.created_at)));
  }

  function refresh() {
    generation += 1;
    offset = 0;
    exhausted = false;
    loading = null;
    clear(grid);
    count.textContent = '';
    loadMore();
  }

  const refreshSoon = debounce(refresh, 250);
  search.addEventListener('input', () => { state.q = search.value; refreshSoon(); });
  for (const [key, control] of Object.entries(controls)) {
    control.addEventListener(control.tagName === 'SELECT' || control.type === 'date' ? 'change' : 'input', () => {
      state[key] = control.value;
      refreshSoon();
    });
  }
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadMore();
  }, { rootMargin: '400px' });
  observer.observe(sentinel);
  refresh();

  return { el, refresh, destroy: () => observer.disconnect(), focus: () => search.focus() };
}
