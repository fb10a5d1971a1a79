// Small DOM helpers shared by every view: element building, toasts, dialogs, formatting.

/**
 * Creates an element. `attrs` keys starting with "on" add listeners; `class`, `style`,
 * `dataset` and boolean attributes are handled; children may be strings, nodes or arrays.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key === 'value' || key === 'checked' || key === 'selected') {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const toastBox = () => document.getElementById('toasts');

/** Shows a message; errors stay until dismissed, other kinds fade after a few seconds. */
export function toast(message, kind = 'info') {
  const close = h('button', { class: 'ghost icon small', 'aria-label': 'Dismiss' }, '✕');
  const el = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('div', { class: 'msg' }, message), close);
  close.addEventListener('click', () => el.remove());
  toastBox().append(el);
  if (kind !== 'error') setTimeout(() => el.remove(), 4000);
  return el;
}

/** The error toast each action (by its `what`) last left on screen. */
const failures = new Map();

/**
 * Runs an async action, showing its failure as a readable toast. Returns its result or
 * undefined. A later success of the same action takes its stale failure toast down.
 */
export async function attempt(what, action) {
  try {
    const result = await action();
    failures.get(what)?.remove();
    failures.delete(what);
    return result;
  } catch (err) {
    if (err?.name === 'AbortError') return undefined;
    failures.get(what)?.remove();
    failures.set(what, toast(`${what} failed: ${err.message}`, 'error'));
    return undefined;
  }
}

/**
 * Opens a modal dialog built by `build(close)`; resolves with the value passed to `close`
 * (undefined when dismissed with Escape).
 */
export function modal(build, { wide = false } = {}) {
  return new Promise((resolve) => {
    const dialog = h('dialog', { class: wide ? 'wide' : '' });
    let result;
    const close = (value) => { result = value; dialog.close(); };
    dialog.append(build(close));
    dialog.addEventListener('close', () => { dialog.remove(); resolve(result); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** Asks a yes/no question; resolves true only on an explicit confirmation. */
export function confirmDialog(title, message, confirmLabel = 'Delete') {
  return modal((close) => h('form', { method: 'dialog', onsubmit: (e) => { e.preventDefault(); close(true); } },
    h('h2', {}, title),
    h('p', { class: 'muted' }, message),
    h('div', { class: 'buttons' },
      h('button', { type: 'button', onclick: () => close(false) }, 'Cancel'),
      h('button', { type: 'submit', class: 'danger solid', autofocus: true }, confirmLabel))));
}

/** Asks for one line of text; resolves with it, or undefined when cancelled. */
export function promptDialog(title, label, initial = '', submitLabel = 'Save') {
  return modal((close) => {
    const input = h('input', { value: initial, required: true, 'aria-label': label });
    const form = h('form', { onsubmit: (e) => { e.preventDefault(); close(input.value.trim()); } },
      h('h2', {}, title),
      h('label', {}, label), input,
      h('div', { class: 'buttons' },
        h('button', { type: 'button', onclick: () => close(undefined) }, 'Cancel'),
        h('button', { type: 'submit', class: 'primary' }, submitLabel)));
    queueMicrotask(() => { input.focus(); input.select(); });
    return form;
  });
}

export function formatDate(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

export function formatDuration(seconds) {
  if (seconds === undefined || seconds === null || !Number.isFinite(seconds)) return '–';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m ${String(s % 60).padStart(2, '0')}s` : `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return '';
  const units = ['B', 'KB', 'MB', 'GB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Debounces `fn` by `ms` milliseconds. */
export function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}
