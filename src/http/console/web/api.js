// The console's only way to the daemon: `/api/v1`, with the session cookie
// (sent by the browser, never readable here) and the session's CSRF token
// (kept in memory only) on every change.

/** Who is logged in: `{role, actor, csrf_token, expires_at}` or null. */
export const session = { current: null };

/** Called when the API says the session is gone (set by the app). */
let onLoggedOut = () => {};
export function whenLoggedOut(fn) {
  onLoggedOut = fn;
}

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** Whether the session may change data (the viewer may not). */
export function canChange() {
  return session.current != null && session.current.role === 'admin';
}

/** One request; resolves to `{status, data}`, rejects with ApiError
 * carrying the API's own message. */
export async function request(method, path, body, { login = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD' && session.current) {
    headers['X-CSRF-Token'] = session.current.csrf_token;
  }
  let r;
  try {
    r = await fetch('/api/v1' + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'cannot reach erpsync: is the daemon running?', null);
  }
  const text = await r.text();
  let data = text;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON: keep the text */
  }
  if (!r.ok) {
    const message = (data && typeof data === 'object' && data.error) || `${r.status} ${r.statusText}`;
    if (r.status === 401 && !login) {
      session.current = null;
      onLoggedOut(message);
    }
    throw new ApiError(r.status, message, data);
  }
  return { status: r.status, data };
}

export const get = (path) => request('GET', path).then((r) => r.data);
export const post = (path, body) => request('POST', path, body === undefined ? {} : body).then((r) => r.data);
export const del = (path) => request('DELETE', path).then((r) => r.data);

/** `?a=1&b=x` from an object, leaving out empty values. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  }
  const s = p.toString();
  return s ? '?' + s : '';
}

/** A customer's API path `/customers/{connector}/{id}`. */
export function customerPath(ref) {
  const i = ref.indexOf(':');
  return `/customers/${encodeURIComponent(ref.slice(0, i))}/${encodeURIComponent(ref.slice(i + 1))}`;
}
