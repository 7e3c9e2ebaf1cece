// A document's life over the HTTP API (docs/protocol.md, "HTTP API"), for
// both pages: its title, rename, the trash and restore. No DOM here, so the
// Node tests cover it; docactions.js (editor) and home.js draw the controls.
//
// Every call resolves to {ok: true, status, body} or {ok: false, status,
// message} (status 0: the server could not be reached) and never throws.

const enc = encodeURIComponent;

async function call(method, path, { token = null, body = undefined, fetchImpl = globalThis.fetch, paged = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetchImpl(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'same-origin',
    });
  } catch (e) {
    return { ok: false, status: 0, message: String((e && e.message) || e) };
  }
  const raw = await resp.text().catch(() => '');
  let parsed = null;
  try {
    parsed = raw ? JSON.parse(raw) : null;
  } catch (e) {
    parsed = null;
  }
  if (resp.ok && paged) return { ok: true, status: resp.status, body: parsed, next: nextPage(resp) };
  if (resp.ok) return { ok: true, status: resp.status, body: parsed };
  // Refusals are JSON {error, message} or a plain-text line (401/403/404).
  const message = parsed && typeof parsed.message === 'string' ? parsed.message
    : parsed && typeof parsed.detail === 'string' ? parsed.detail : (parsed === null ? raw.trim() : '');
  return { ok: false, status: resp.status, message: message.slice(0, 300) };
}

/** The path of the next page named by a response's `Link: <…>; rel="next"`, or null. */
function nextPage(resp) {
  const link = resp.headers && typeof resp.headers.get === 'function' ? resp.headers.get('Link') : null;
  const m = link && /<([^>]*)>\s*;\s*rel="?next"?/.exec(link);
  return m ? m[1] : null;
}

/** The title set by hand ({ok, body: {id, title}}; title null: the first heading stands in). */
export const getTitle = (doc, opts) => call('GET', `/api/docs/${enc(doc)}/title`, opts);
/** Set the title; null or '' goes back to the first heading. */
export const setTitle = (doc, title, opts) => call('POST', `/api/docs/${enc(doc)}/title`, { ...opts, body: { title } });
/** Move `doc` to `name`; the old name redirects from then on. */
export const renameDoc = (doc, name, opts) => call('POST', `/api/docs/${enc(doc)}/rename`, { ...opts, body: { name } });
/** Into the trash ({body: {id, deleted, purge_at}}). */
export const trashDoc = (doc, opts) => call('DELETE', `/api/docs/${enc(doc)}`, opts);
/** Out of the trash. */
export const restoreDoc = (doc, opts) => call('POST', `/api/trash/${enc(doc)}/restore`, opts);
/** The documents, or those in the trash, that the token reaches (each row has `role`). */
export async function listDocs(opts) {
  // The server sends the list in pages; each names the next in its Link header.
  const rows = [];
  let path = '/api/docs';
  for (let pages = 0; path; pages += 1) {
    const r = await call('GET', path, { ...opts, paged: true });
    if (!r.ok || !Array.isArray(r.body)) return r;
    rows.push(...r.body);
    if (pages >= 1000) break; // a million rows: what a page can show, and a stop for a server that loops
    path = r.next;
  }
  return { ok: true, status: 200, body: rows };
}
export const listTrash = (opts) => call('GET', '/api/trash', opts);

/** "Could not rename: …" with what to do next, for a refused call. */
export function failureText(action, r) {
  const why = r.message ? `: ${r.message}` : '';
  switch (r.status) {
    case 0: return `Could not ${action}: the server could not be reached${why}. Try again.`;
    case 401: return `Could not ${action}: your access has expired or is no longer valid. Ask for a new link.`;
    case 403: return `Could not ${action}: your link does not allow it${why}.`;
    case 404: return `Could not ${action}${why || ': it no longer exists (deleted or renamed meanwhile)'}. Reload the page.`;
    case 409: return `Could not ${action}${why}.`;
    case 429: return `Could not ${action}: too many requests. Try again in a moment.`;
    default: return `Could not ${action} (HTTP ${r.status}${why}).`;
  }
}

/** A size in bytes as people read it: "812 B", "1.6 kB", "2.0 MB" (powers of 1000, as browsers and disks say). */
export function formatBytes(n) {
  if (!Number.isFinite(n) || n < 0) return '';
  if (n < 1000) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let v = n;
  let u = -1;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  const text = v < 99.95 ? v.toFixed(1) : String(Math.round(v));
  // 999.6 kB would print as "1000 kB": carry it over to the next unit.
  if (text === '1000' && u < units.length - 1) return `1.0 ${units[u + 1]}`;
  return `${text} ${units[u]}`;
}

/** When a trashed document is purged (Unix seconds), as "in 29 days" / "within a day". */
export function purgeText(purgeAt, now = Date.now()) {
  if (typeof purgeAt !== 'number') return '';
  const days = Math.round((purgeAt * 1000 - now) / 86400000);
  if (days < 1) return 'purged within a day';
  return `purged in ${days} day${days === 1 ? '' : 's'}`;
}
