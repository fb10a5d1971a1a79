// The whole job queue across projects, live, under the cards the GPU lane runs on.

import * as endpoints from '../endpoints.js';
import { jobList } from '../job-card.js';
import * as jobsFeed from '../jobs-feed.js';
import { attempt, h } from '../ui.js';

export async function render(container) {
  const list = h('div', { class: 'panel', id: 'all-jobs' });
  const cards = h('div', { class: 'row wrap', id: 'cards', 'aria-label': 'Cards' });
  container.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Jobs'), h('span', { class: 'spacer' }),
      h('button', { onclick: () => attempt('Reloading jobs', jobsFeed.reload) }, 'Refresh')),
    cards, list);
  // One line a card: its name, the model it holds, and the job it runs (or "free").
  const showCards = async () => {
    const states = await endpoints.jobs.cards().catch(() => null);
    if (!states) return;
    cards.replaceChildren(...states.map((c) => h('span', { class: `badge ${c.busy ? 'running' : ''}`, dataset: { card: c.card } },
      `${c.card} · ${c.model ?? 'no model'} · ${c.busy ? (c.job_id ? `job #${c.job_id}` : 'busy') : 'free'}`)));
  };
  // Cards change when jobs start and end: refreshed on job changes, at most twice a second.
  let pending = null;
  const stopCards = jobsFeed.subscribe(() => { pending ??= setTimeout(() => { pending = null; showCards(); }, 500); });
  await Promise.all([attempt('Loading jobs', jobsFeed.reload), showCards()]);
  const stopJobs = jobList(list, { empty: 'No jobs yet. Generate a shot from a project’s storyboard.' });
  return () => { stopCards(); clearTimeout(pending); stopJobs(); };
}
