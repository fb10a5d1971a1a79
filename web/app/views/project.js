// One project's workspace: script and bible on the left, the storyboard (or the review screen)
// in the middle, the project's job queue on the right.

import * as endpoints from '../endpoints.js';
import { jobList } from '../job-card.js';
import { attempt, h, promptDialog, toast } from '../ui.js';
import { bibleEditor, loadBible } from '../bible.js';
import { storyboardEditor } from '../storyboard.js';
import { reviewScreen } from '../review.js';

export async function render(container, { projectId, tab }) {
  const project = await endpoints.projects.get(projectId);
  let boards = await endpoints.storyboards.list(projectId);
  if (!boards.length) boards = [await endpoints.storyboards.create(projectId, 'Storyboard')];
  const board = boards[0];
  const bible = loadBible(board);

  const title = h('h1', { class: 'ellipsis' }, project.name);
  const rename = h('button', { class: 'ghost small', 'aria-label': 'Rename project', onclick: async () => {
    const name = await promptDialog('Rename project', 'Project name', project.name, 'Rename');
    if (!name || name === project.name) return;
    const renamed = await attempt('Renaming the project', () => endpoints.projects.update(projectId, { name }));
    if (renamed) { project.name = renamed.name; title.textContent = renamed.name; toast('Renamed.', 'ok'); }
  } }, '✎');
  const tabLink = (id, label) => h('button', {
    role: 'tab', 'aria-selected': String(tab === id),
    onclick: () => { location.hash = id === 'storyboard' ? `#/projects/${projectId}` : `#/projects/${projectId}/${id}`; },
  }, label);
  const actions = h('div', { class: 'row' });
  const middle = h('section', { class: 'stack', 'aria-label': tab === 'review' ? 'Review' : 'Storyboard' });
  const queue = h('div', { class: 'jobs' });
  const context = { project, board, bible, actions };

  container.append(
    h('div', { class: 'page-head' },
      h('a', { href: '#/', class: 'muted' }, 'Projects'), h('span', { class: 'muted' }, '/'), title, rename,
      h('div', { class: 'tabs', role: 'tablist' }, tabLink('storyboard', 'Storyboard'), tabLink('review', 'Review')),
      h('span', { class: 'spacer' }), actions),
    h('div', { class: 'workspace' },
      h('aside', { class: 'stack', 'aria-label': 'Script and bible' }, bibleEditor(context, () => editor?.reload())),
      middle,
      h('aside', { class: 'queue panel', 'aria-label': 'Job queue' }, h('h3', {}, 'Job queue'), queue)),
  );

  const editor = tab === 'review' ? await reviewScreen(middle, context) : await storyboardEditor(middle, context);
  const stopJobs = jobList(queue, {
    filter: (job) => job.project_id === projectId,
    onReproduce: (job) => editor.reproduce?.(job),
    empty: 'Nothing queued for this project.',
  });
  return () => { stopJobs(); editor.destroy?.(); };
}
