// Plugins: installed plugins with their capabilities, install from files with a grant dialog,
// enable/disable, uninstall, and the audit log of their host calls.

import * as endpoints from '../endpoints.js';
import { attempt, clear, confirmDialog, formatDate, h, modal, toast } from '../ui.js';

export async function render(container) {
  const table = h('tbody');
  const audit = h('tbody');
  const auditFilter = h('select', { 'aria-label': 'Audit log plugin', onchange: () => attempt('Loading the audit log', loadAudit) },
    h('option', { value: '' }, 'All plugins'));
  const component = h('input', { type: 'file', id: 'plugin-component', accept: '.wasm,application/wasm', 'aria-label': 'Plugin component (.wasm)' });
  const manifest = h('input', { type: 'file', id: 'plugin-manifest', accept: '.toml', 'aria-label': 'Plugin manifest (plugin.toml)' });

  container.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Plugins')),
    h('div', { class: 'stack' },
      h('section', { class: 'panel stack', 'aria-label': 'Install a plugin' }, h('h3', {}, 'Install from file'),
        h('div', { class: 'grid-2' },
          h('div', { class: 'field' }, h('label', { for: 'plugin-component' }, 'Component (.wasm)'), component),
          h('div', { class: 'field' }, h('label', { for: 'plugin-manifest' }, 'Manifest (plugin.toml)'), manifest)),
        h('div', { class: 'row' }, h('button', { class: 'primary', id: 'install-plugin', onclick: install }, 'Review and install…'))),
      h('section', { class: 'panel', 'aria-label': 'Installed plugins' }, h('h3', {}, 'Installed'),
        h('table', {}, h('thead', {}, h('tr', {}, ['Plugin', 'Kind', 'Capabilities', 'Enabled', ''].map((t) => h('th', {}, t)))), table)),
      h('section', { class: 'panel', 'aria-label': 'Audit log' },
        h('div', { class: 'row' }, h('h3', { class: 'grow' }, 'Audit log'), auditFilter),
        h('table', {}, h('thead', {}, h('tr', {}, ['When', 'Plugin', 'Call', 'Capability', 'Outcome'].map((t) => h('th', {}, t)))), audit))));

  async function loadPlugins() {
    const list = await endpoints.plugins.list();
    const selected = auditFilter.value;
    auditFilter.replaceChildren(h('option', { value: '' }, 'All plugins'),
      ...list.map((p) => h('option', { value: p.id, selected: p.id === selected }, p.id)));
    if (!list.length) { clear(table, h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No plugins installed.'))); return; }
    clear(table, list.map(row));
  }

  function row(plugin) {
    const toggle = h('input', { type: 'checkbox', checked: plugin.enabled, 'aria-label': `Enable ${plugin.id}`, style: 'width:auto',
      onchange: async () => {
        const ok = await attempt(`${toggle.checked ? 'Enabling' : 'Disabling'} ${plugin.id}`,
          () => endpoints.plugins.setEnabled(plugin.id, toggle.checked));
        if (!ok) toggle.checked = !toggle.checked;
      } });
    return h('tr', { dataset: { pluginId: plugin.id } },
      h('td', {}, h('strong', {}, plugin.name ?? plugin.id), h('div', { class: 'small muted mono' }, `${plugin.id} · v${plugin.version} · API ${plugin.api_version}`),
        plugin.description ? h('div', { class: 'small' }, plugin.description) : null),
      h('td', {}, plugin.world),
      h('td', {}, capabilityList(plugin.granted ?? [], plugin.denied ?? [])),
      h('td', {}, toggle),
      h('td', {}, h('button', { class: 'small danger', onclick: () => uninstall(plugin) }, 'Uninstall')));
  }

  async function uninstall(plugin) {
    if (!await confirmDialog(`Uninstall ${plugin.id}?`, 'Its audit log entries are kept.', 'Uninstall')) return;
    if (await attempt('Uninstalling', () => endpoints.plugins.uninstall(plugin.id)) !== undefined) {
      toast(`Uninstalled ${plugin.id}.`, 'ok');
      await attempt('Reloading plugins', loadPlugins);
    }
  }

  async function install() {
    const wasm = component.files[0];
    const toml = manifest.files[0];
    if (!wasm || !toml) { toast('Choose both the .wasm component and its plugin.toml.', 'error'); return; }
    const files = () => {
      const form = new FormData();
      form.append('component', wasm, wasm.name);
      form.append('manifest', toml, toml.name);
      return form;
    };
    const inspected = await attempt('Reading the plugin', () => endpoints.plugins.inspect(files()));
    if (!inspected) return;
    const grants = await grantDialog(inspected);
    if (!grants) return;
    const form = files();
    for (const capability of grants.grant) form.append('grant', capability);
    const installed = await attempt('Installing the plugin', () => endpoints.plugins.install(form));
    if (!installed) return;
    toast(`Installed ${installed.id ?? inspected.id}.`, 'ok');
    component.value = '';
    manifest.value = '';
    await attempt('Reloading plugins', loadPlugins);
    await attempt('Loading the audit log', loadAudit);
  }

  async function loadAudit() {
    const page = await endpoints.plugins.audit({ plugin_id: auditFilter.value, limit: 100 });
    const entries = page.entries ?? page;
    if (!entries.length) { clear(audit, h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No host calls recorded yet.'))); return; }
    clear(audit, entries.map((e) => h('tr', {},
      h('td', { class: 'small' }, formatDate(new Date(e.at_ms).toISOString())), h('td', {}, e.plugin_id),
      h('td', { class: 'mono' }, e.function, e.detail ? h('div', { class: 'small muted' }, e.detail) : null),
      h('td', { class: 'mono small' }, e.capability ?? ''),
      h('td', {}, h('span', { class: `badge ${e.allowed && !e.error ? 'succeeded' : 'failed'}` },
        !e.allowed ? 'refused' : e.error ? 'error' : 'ok'), e.error ? h('div', { class: 'small muted' }, e.error) : null))));
  }

  await attempt('Loading plugins', loadPlugins);
  await attempt('Loading the audit log', loadAudit);
}

function capabilityList(granted, denied) {
  if (!granted.length && !denied.length) return h('span', { class: 'muted small' }, 'none');
  return h('div', { class: 'caps' },
    granted.map((name) => h('span', { class: 'cap granted', title: 'granted' }, name)),
    denied.map((name) => h('span', { class: 'cap refused', title: 'refused' }, name)));
}

/**
 * Lists what the plugin asks for, one checkbox per capability (all unticked: nothing is granted
 * without a deliberate choice). Resolves with {grant: [capability…]} or undefined; every
 * capability not ticked is refused.
 */
function grantDialog(plugin) {
  const requested = plugin.capabilities ?? [];
  const boxes = requested.map((name) => ({
    name,
    box: h('input', { type: 'checkbox', id: `grant-${name.replace(/\W/g, '-')}`, style: 'width:auto', dataset: { capability: name } }),
    why: plugin.explanations?.[name] ?? '',
  }));
  return modal((close) => h('form', {
    id: 'grant-dialog',
    onsubmit: (e) => { e.preventDefault(); close({ grant: boxes.filter((b) => b.box.checked).map((b) => b.name) }); },
  },
  h('h2', {}, `Install ${plugin.name ?? plugin.id} ${plugin.version ?? ''}?`),
  h('p', { class: 'small muted mono' }, `${plugin.id} · ${plugin.world} · API ${plugin.api_version}`),
  plugin.description ? h('p', { class: 'muted' }, plugin.description) : null,
  h('p', {}, requested.length
    ? 'This plugin asks for the capabilities below. Tick only those you grant; it cannot use the others.'
    : 'This plugin asks for no capabilities.'),
  h('div', { class: 'stack' }, boxes.map(({ name, box, why }) => h('label', { class: 'row', for: box.id, style: 'color:var(--text);font-size:14px' },
    box, h('span', { class: 'cap' }, name), why ? h('span', { class: 'muted small' }, why) : null))),
  h('div', { class: 'buttons' },
    h('button', { type: 'button', onclick: () => close(undefined) }, 'Cancel'),
    h('button', { type: 'submit', class: 'primary' }, 'Install with these grants'))));
}
