// The one place that talks HTTP to the studio. Every failure becomes an ApiError whose
// message a person can read; writes carry the session's CSRF token when the server uses one.

let csrfToken = null;

export class ApiError extends Error {
  constructor(message, status = 0, code = 'network') {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Loads the sign-in state; returns {auth_required, authenticated}. */
export async function loadSession() {
  const session = await request('GET', '/api/auth/session');
  csrfToken = session.csrf_token ?? null;
  return session;
}

export async function logout() {
  await request('POST', '/api/auth/logout');
  location.reload();
}

/**
 * Sends one request. `body` may be a plain object (sent as JSON), FormData or a Blob.
 * Resolves to the parsed JSON (or null for an empty answer).
 */
export async function request(method, path, body, { signal } = {}) {
  const headers = { Accept: 'application/json' };
  let payload;
  if (body instanceof FormData || body instanceof Blob) {
    payload = body;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  if (method !== 'GET' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, signal, credentials: 'same-origin' });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError('Cannot reach the studio server. Check that it is running; your edits are kept as drafts.');
  }
  if (response.status === 401 && !path.startsWith('/api/auth/')) {
    // The session ended (token reset or expiry): the server answers page loads with sign-in.
    location.reload();
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!response.ok) {
    const detail = data?.error?.message ?? (typeof data === 'string' && data.trim()) ?? '';
    throw new ApiError(
      detail ? `${detail}` : `The server answered ${response.status} ${response.statusText}`,
      response.status,
      data?.error?.code ?? `http_${response.status}`,
    );
  }
  return data;
}

export const get = (path, opts) => request('GET', path, undefined, opts);
export const post = (path, body) => request('POST', path, body ?? {});
export const patch = (path, body) => request('PATCH', path, body);
export const put = (path, body) => request('PUT', path, body);
export const del = (path) => request('DELETE', path);

/** Builds a query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === '') continue;
    if (Array.isArray(value)) value.forEach((v) => q.append(key, v));
    else q.set(key, value);
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
