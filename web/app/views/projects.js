// Projects: list, create, rename, delete (after confirmation), open.

import { del, get, patch, post } from '../api.js';
import { attempt, clear, confirmDialog, formatDate, h, promptDialog, toast } from '../ui.js';
import { clearDraft, loadDraft, saveDraft } from '../drafts.js';

export async function render(container) {
  const grid = h('div', { class: 'project-grid', 'aria-live': 'polite' });
  const nameInput = h('input', {
    id: 'new-project-name', placeholder: 'New project name', 'aria-label': 'New project name',
    value: loadDraft('new-project') ?? '', oninput: () => saveDraft('new-project', nameInput.value),
  });
  const createForm = h('form', { class: 'row', onsubmit: create },
    nameInput, h('button', { type: 'submit', class: 'primary' }, 'Create project'));

  container.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Projects'), h('span', { class: 'spacer' }), createForm),
    grid,
  );

  async function create(event) {
    event.preventDefault();
    const name = nameInput.value.trim();
    if (!name) { toast('Give the project a name first.', 'error'); nameInput.focus(); return; }
    const project = await attempt('Creating the project', () => post('/api/projects', { name }));
    if (!project) return;
    clearDraft('new-project');
    location.hash = `#/projects/${project.id}`;
  }

  async function refresh() {
    const projects = await get('/api/projects');
    if (!projects.length) {
      clear(grid, h('div', { class: 'empty', style: 'grid-column: 1 / -1' },
        'No projects yet. Name one above and press Create.'));
      return;
    }
    clear(grid, projects.map(card));
  }

  function card(project) {
    return h('article', { class: 'panel project-card', dataset: { projectId: project.id } },
      h('a', { class: 'name ellipsis', href: `#/projects/${project.id}` }, project.name),
      h('div', { class: 'muted small' }, `Updated ${formatDate(project.updated_at)}`),
      h('div', { class: 'actions' },
        h('a', { class: 'button small primary', href: `#/projects/${project.id}` }, 'Open'),
        h('button', { class: 'small', onclick: () => rename(project) }, 'Rename'),
        h('span', { class: 'spacer' }),
        h('button', { class: 'small danger', onclick: () => remove(project) }, 'Delete')));
  }

  async function rename(project) {
    const name = await promptDialog('Rename project', 'Project name', project.name, 'Rename');
    if (!name || name === project.name) return;
    if (await attempt('Renaming the project', () => patch(`/api/projects/${project.id}`, { name }))) {
      toast(`Renamed to “${name}”.`, 'ok');
      await attempt('Reloading projects', refresh);
    }
  }

  async function remove(project) {
    const sure = await confirmDialog(`Delete “${project.name}”?`,
      'Its storyboards and shots are deleted. Generated files stay in the asset library.');
    if (!sure) return;
    if (await attempt('Deleting the project', () => del(`/api/projects/${project.id}`)) !== undefined) {
      toast(`Deleted “${project.name}”.`, 'ok');
      await attempt('Reloading projects', refresh);
    }
  }

  await refresh();
}
