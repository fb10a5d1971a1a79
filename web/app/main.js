// Entry point: loads the session, then maps the URL hash to a view. Each view module exports
// `render(container, params)` and may return a cleanup function called when the view changes.

import { loadSession, logout } from './api.js';
import { attempt, clear, h } from './ui.js';
import * as jobsFeed from './jobs-feed.js';

const routes = [
  [/^#?\/?$/, 'projects', () => import('./views/projects.js'), () => ({})],
  [/^#\/projects\/(\d+)(?:\/(review))?$/, 'projects', () => import('./views/project.js'),
    (m) => ({ projectId: Number(m[1]), tab: m[2] ?? 'storyboard' })],
  [/^#\/assets$/, 'assets', () => import('./views/assets.js'), () => ({})],
  [/^#\/jobs$/, 'jobs', () => import('./views/jobs.js'), () => ({})],
  [/^#\/plugins$/, 'plugins', () => import('./views/plugins.js'), () => ({})],
];

const view = document.getElementById('view');
let cleanup = null;
let generation = 0;

async function route() {
  const hash = location.hash || '#/';
  const match = routes.map(([re, nav, load, params]) => [hash.match(re), nav, load, params]).find(([m]) => m);
  if (cleanup) { cleanup(); cleanup = null; }
  const current = ++generation;
  if (!match) {
    clear(view, h('div', { class: 'empty' }, 'Nothing here. ', h('a', { href: '#/' }, 'Back to projects')));
    return;
  }
  const [m, nav, load, params] = match;
  for (const link of document.querySelectorAll('[data-nav]')) {
    if (link.dataset.nav === nav) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  // A module that cannot be fetched (offline, signed out meanwhile) is said on the page.
  const module = await attempt('Opening the page', load);
  if (current !== generation || !module) return;
  clear(view);
  const result = await attempt('Opening the page', () => module.render(view, params(m)));
  if (current !== generation) { if (typeof result === 'function') result(); return; }
  cleanup = typeof result === 'function' ? result : null;
}

async function start() {
  const session = await attempt('Loading the session', loadSession);
  if (session?.auth_required) {
    const button = document.getElementById('logout');
    button.hidden = false;
    button.addEventListener('click', () => attempt('Signing out', logout));
  }
  jobsFeed.start(document.getElementById('queue-pill'), document.getElementById('offline'));
  window.addEventListener('hashchange', route);
  await route();
}

start();
