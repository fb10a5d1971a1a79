// Live job state for the whole page: one Server-Sent Events stream from the studio, merged
// into a map of jobs that views subscribe to. Reconnects by itself and reloads the job list
// after a gap, so a server restart only shows the offline banner for a moment.

import { get } from './api.js';

/** Job kinds that add takes to a shot: `shoot` (generate, review, retry) and plain `generate`. */
export const TAKE_KINDS = new Set(['shoot', 'generate']);

const jobs = new Map();
const listeners = new Set();
let source = null;
let pill = null;
let banner = null;
let retryTimer = null;

/** All known jobs, newest first. */
export function all() {
  return [...jobs.values()].sort((a, b) => b.id - a.id);
}

export function byId(id) {
  return jobs.get(id);
}

/** Calls `fn(job)` for every job change (and `fn(null)` after a full reload); returns an unsubscribe. */
export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** Records a job the page just submitted or fetched. */
export function put(job) {
  const merged = { ...jobs.get(job.id), ...job };
  jobs.set(job.id, merged);
  for (const fn of listeners) fn(merged);
  updatePill();
}

export async function reload() {
  const list = await get('/api/jobs?limit=200');
  jobs.clear();
  for (const job of list) jobs.set(job.id, job);
  for (const fn of listeners) fn(null);
  updatePill();
}

export function start(pillElement, offlineBanner) {
  pill = pillElement;
  banner = offlineBanner;
  connect();
}

function connect() {
  clearTimeout(retryTimer);
  source?.close();
  source = new EventSource('/api/jobs/events');
  source.addEventListener('open', () => {
    banner.hidden = true;
    reload().catch(() => {});
  });
  // `state` and `progress` events name the job; a job first seen here is fetched whole.
  const onEvent = (event) => {
    let data;
    try { data = JSON.parse(event.data); } catch { return; }
    const id = data.job_id;
    if (id === undefined) return;
    const change = data.type === 'progress'
      ? { id, progress: data.progress, ...(data.card ? { card: data.card } : {}) }
      : { id, state: data.state, attempts: data.attempts, error: data.error };
    if (jobs.has(id)) put(change);
    else get(`/api/jobs/${id}`).then(put, () => {});
  };
  source.addEventListener('state', onEvent);
  source.addEventListener('progress', onEvent);
  // The server no longer keeps what this page missed (it reconnected late): start afresh.
  source.addEventListener('reset', () => reload().catch(() => {}));
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) {
      banner.hidden = false;
      retryTimer = setTimeout(connect, 2000);
    }
  });
}

function updatePill() {
  if (!pill) return;
  const active = all().filter((j) => j.state === 'running' || j.state === 'queued');
  const running = active.find((j) => j.state === 'running');
  if (!active.length) {
    pill.textContent = 'Queue idle';
  } else if (running?.progress?.total) {
    const p = running.progress;
    pill.textContent = `${active.length} job${active.length > 1 ? 's' : ''} · ${p.stage ?? ''} ${p.step}/${p.total}`;
  } else {
    pill.textContent = `${active.length} job${active.length > 1 ? 's' : ''} queued`;
  }
}
