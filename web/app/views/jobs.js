// The whole job queue across projects, live.

import { jobList } from '../job-card.js';
import * as jobsFeed from '../jobs-feed.js';
import { attempt, h } from '../ui.js';

export async function render(container) {
  const list = h('div', { class: 'panel', id: 'all-jobs' });
  container.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Jobs'), h('span', { class: 'spacer' }),
      h('button', { onclick: () => attempt('Reloading jobs', jobsFeed.reload) }, 'Refresh')),
    list);
  await attempt('Loading jobs', jobsFeed.reload);
  return jobList(list, { empty: 'No jobs yet. Generate a shot from a project’s storyboard.' });
}
