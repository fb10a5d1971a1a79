// The studio's HTTP routes used by the views, in one place: paths and request shapes follow
// the server's OpenAPI document (/api/openapi.json).

import { del, get, patch, post, put, query, request } from './api.js';

export const projects = {
  list: () => get('/api/projects'),
  get: (id) => get(`/api/projects/${id}`),
  create: (name) => post('/api/projects', { name }),
  /** `fields`: {name?, max_attempts?, keyframes?}. */
  update: (id, fields) => patch(`/api/projects/${id}`, fields),
  remove: (id) => del(`/api/projects/${id}`),
};

export const storyboards = {
  list: (projectId) => get(`/api/projects/${projectId}/storyboards`),
  create: (projectId, title) => post(`/api/projects/${projectId}/storyboards`, { title }),
  update: (id, fields) => patch(`/api/storyboards/${id}`, fields),
};

export const shots = {
  list: (storyboardId) => get(`/api/storyboards/${storyboardId}/shots`),
  create: (storyboardId, fields) => post(`/api/storyboards/${storyboardId}/shots`, fields),
  update: (id, fields) => patch(`/api/shots/${id}`, fields),
  remove: (id) => del(`/api/shots/${id}`),
  reorder: (storyboardId, order) => put(`/api/storyboards/${storyboardId}/shots/order`, { order }),
};

export const looks = {
  /** A storyboard's character looks: [{id, character_id, asset_id, generation_id, chosen}]. */
  list: (storyboardId) => get(`/api/storyboards/${storyboardId}/looks`),
  choose: (id) => patch(`/api/looks/${id}`, { chosen: true }),
};

/** `/api/...` of a LoRA scope: {project}, {storyboard, character} or {shot}. */
function loraPath(scope) {
  if (scope.shot !== undefined) return `/api/shots/${scope.shot}/loras`;
  if (scope.character !== undefined) {
    return `/api/storyboards/${scope.storyboard}/characters/${encodeURIComponent(scope.character)}/loras`;
  }
  return `/api/projects/${scope.project}/loras`;
}

export const loras = {
  /** [{asset_id, name, strength, strength_2?, target}], in order. */
  list: (scope) => get(loraPath(scope)),
  /** Replaces the list: [{asset_id, strength, strength_2?}]. */
  set: (scope, choices) => put(loraPath(scope), choices),
  /** What a shot's generation applies after precedence: [{asset_id, name, strength, sha256, from}]. */
  applied: (shotId, target = 'video') => get(`/api/shots/${shotId}/loras/applied${query({ target })}`),
};

export const assets = {
  search: (params, opts) => get(`/api/assets/search${query(params)}`, opts),
  get: (id) => get(`/api/assets/${id}`),
  update: (id, fields) => patch(`/api/assets/${id}`, fields),
  remove: (id) => del(`/api/assets/${id}`),
  upload: (file, fields) => {
    const form = new FormData();
    for (const [key, value] of Object.entries(fields)) if (value !== undefined && value !== '') form.append(key, value);
    form.append('file', file, file.name);
    return request('POST', '/api/assets', form);
  },
  fileUrl: (id) => `/api/assets/${id}/file`,
  downloadUrl: (id) => `/api/assets/${id}/file`,
};

export const jobs = {
  list: (params) => get(`/api/jobs${query(params)}`),
  get: (id) => get(`/api/jobs/${id}`),
  submit: (kind, params, projectId) => post('/api/jobs', { kind, params, project_id: projectId }),
  cancel: (id) => post(`/api/jobs/${id}/cancel`),
  retry: (id) => post(`/api/jobs/${id}/retry`),
  /** The cards the GPU lane runs on: what each holds and the job it runs now. */
  cards: () => get('/api/gpus'),
};

export const generations = {
  get: (id) => get(`/api/generations/${id}`),
};

export const models = {
  list: () => get('/api/models'),
};

export const finishing = {
  /** {models: [{file, kind, architecture, scale, version, size_bytes, error}], upscaler_help, interpolator_help}. */
  models: () => get('/api/finishing/models'),
};

export const presets = {
  list: () => get('/api/presets'),
};

export const plugins = {
  list: () => get('/api/plugins'),
  inspect: (form) => request('POST', '/api/plugins/inspect', form),
  install: (form) => request('POST', '/api/plugins', form),
  setEnabled: (id, enabled) => patch(`/api/plugins/${encodeURIComponent(id)}`, { enabled }),
  uninstall: (id) => del(`/api/plugins/${encodeURIComponent(id)}`),
  audit: (params) => get(`/api/plugins/audit${query(params)}`),
};
