// Share links (docs/security.md, "Share links"): which links the viewer may
// hand out, and minting them with POST /api/docs/{doc}/share. No DOM here, so
// the Node tests cover it; editor.js draws the menu.
//
// The server is the authority: the page asks it for each link when the share
// menu opens and shows only what it granted. The token's claims are decoded
// (never verified) only to skip asking for an edit link that a read-only
// viewer could not get anyway.

export const ROLES = ['edit', 'read'];

/** The payload of a JWT, for display only (the signature is not checked here);
 * null when `token` does not look like one. */
export function tokenClaims(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3 || !/^[A-Za-z0-9_-]+$/.test(parts[1])) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' && !Array.isArray(claims) ? claims : null;
  } catch (e) {
    return null;
  }
}

/** The link roles worth asking the server for. A read-only viewer (by the
 * server's welcome, or by its token's claims) is never offered an edit link;
 * a page without a token (an open server) has nothing to ask: its plain URL
 * is the link. */
export function rolesToAsk(token, welcomeRole) {
  if (!token) return [];
  const claims = tokenClaims(token);
  if (welcomeRole === 'read' || (claims && claims.role === 'read')) return ['read'];
  return ['edit', 'read'];
}

/** An absolute link from the server's `url` (a path like `/d/notes#token=...`),
 * refusing anything that would leave this origin. */
export function absoluteLink(url, origin) {
  if (typeof url !== 'string' || !url.startsWith('/') || url.startsWith('//') || url.includes('\\')) return null;
  let u;
  try {
    u = new URL(url, origin);
  } catch (e) {
    return null;
  }
  return u.origin === new URL(origin).origin ? u.href : null;
}

/** Ask the server for a `role` link to `doc` on behalf of `token`.
 * Resolves to {ok: true, role, href, expires, id} or {ok: false, role, status, message}
 * (status 0: the server could not be reached or answered nonsense). Never throws. */
export async function mintLink({ doc, role, token, origin, fetchImpl = globalThis.fetch }) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetchImpl(`/api/docs/${encodeURIComponent(doc)}/share`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ role }),
      cache: 'no-store',
      credentials: 'same-origin',
    });
  } catch (e) {
    return { ok: false, role, status: 0, message: String((e && e.message) || e) };
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (e) {
    body = null;
  }
  if (!resp.ok) {
    const message = body && typeof body.message === 'string' ? body.message
      : body && typeof body.detail === 'string' ? body.detail : '';
    return { ok: false, role, status: resp.status, message };
  }
  const href = body ? absoluteLink(body.url, origin) : null;
  if (!href) return { ok: false, role, status: 0, message: 'the server answered without a usable link' };
  const expires = body && typeof body.expires === 'number' && Number.isFinite(body.expires) ? body.expires : null;
  const id = typeof body.id === 'string' ? body.id : null;
  return { ok: true, role: body.role === 'read' ? 'read' : role, href, expires, id };
}

const clip = (s, n = 200) => (s.length > n ? `${s.slice(0, n)}…` : s);

/** A sentence for a refused link, or null when the refusal needs no words
 * (403: this token may not share that role, so the option is simply absent). */
export function refusalText(result) {
  const why = result.message ? `: ${clip(result.message)}` : '';
  switch (result.status) {
    case 403: return null;
    case 400:
      return result.role === 'read'
        ? 'Read-only links need a secret on the server (COLLAB_SECRET): without one everyone may edit.'
        : `The server refused to create the link${why}.`;
    case 401: return 'Your access has expired or is no longer valid: ask for a new link.';
    case 429: return 'Too many requests: try again in a moment.';
    case 0: return `Could not get a link from the server${why}.`;
    default: return `The server could not create a link (HTTP ${result.status}${why}).`;
  }
}

/** What the share menu shows for the server's answers: the links granted by
 * role, and a note (text) explaining what is missing, or null. */
export function summarize(results) {
  const links = {};
  const notes = [];
  for (const r of results) {
    if (r.ok) {
      links[r.role] = r;
    } else {
      const t = refusalText(r);
      if (t && !notes.includes(t)) notes.push(t);
    }
  }
  if (!Object.keys(links).length && !notes.length) notes.push('Your access does not allow sharing links to this document.');
  return { links, note: notes.length ? notes.join(' ') : null };
}

/** "Valid until ..." for a link's expiry (Unix seconds), or a warning for a link that never expires. */
export function expiryText(expires) {
  if (expires === null || expires === undefined) return 'This link does not expire.';
  return `Valid until ${new Date(expires * 1000).toLocaleString()}.`;
}

/** The confirmation once a link is on the clipboard. */
export function copiedText(role) {
  if (role === 'read') return 'Read-only link copied';
  if (role === 'edit') return 'Edit link copied';
  return 'Link copied';
}

/** The share links recorded for `doc` (GET /api/docs/{doc}/links).
 * Resolves to {ok: true, links} or {ok: false, status, message}. Never throws. */
export async function listLinks({ doc, token, fetchImpl = globalThis.fetch }) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let resp;
  try {
    resp = await fetchImpl(`/api/docs/${encodeURIComponent(doc)}/links`, {
      headers, cache: 'no-store', credentials: 'same-origin',
    });
  } catch (e) {
    return { ok: false, status: 0, message: String((e && e.message) || e) };
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (e) {
    body = null;
  }
  if (!resp.ok || !Array.isArray(body)) return { ok: false, status: resp.status, message: '' };
  const links = body.filter((l) => l && typeof l.id === 'string' && ROLES.includes(l.role));
  return { ok: true, links };
}

/** Revoke the link `id` with the viewer's `token` (POST /api/tokens/revoke).
 * Resolves to {ok: true} or {ok: false, status, message}. Never throws. */
export async function revokeLink({ id, token, fetchImpl = globalThis.fetch }) {
  let resp;
  try {
    resp = await fetchImpl('/api/tokens/revoke', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify({ id }),
      cache: 'no-store',
      credentials: 'same-origin',
    });
  } catch (e) {
    return { ok: false, status: 0, message: String((e && e.message) || e) };
  }
  if (resp.ok) return { ok: true };
  let body = null;
  try {
    body = await resp.json();
  } catch (e) {
    body = null;
  }
  const message = body && typeof body.message === 'string' ? body.message : '';
  return { ok: false, status: resp.status, message };
}

/** The links worth listing: not revoked, not expired (at `now`, Unix ms), newest first. */
export function activeLinks(links, now = Date.now()) {
  return links
    .filter((l) => !l.revoked && (l.expires === null || l.expires === undefined || l.expires * 1000 > now))
    .sort((a, b) => b.issued - a.issued);
}

const shortTime = (t) => new Date(t * 1000).toLocaleString(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
});

/** One line for a listed link: "Edit link by Ada · Dec 5, 10:04 → Dec 12". */
export function linkLabel(link) {
  const kind = link.role === 'read' ? 'Read-only link' : 'Edit link';
  const by = link.by ? ` by ${clip(link.by, 64)}` : '';
  const until = link.expires ? ` → ${new Date(link.expires * 1000).toLocaleDateString(undefined, {
    month: 'short', day: 'numeric',
  })}` : ', no expiry';
  return `${kind}${by} · ${shortTime(link.issued)}${until}`;
}

/** The tooltip of a listed link: when it was made and until when it works. */
export function linkDetails(link) {
  const until = link.expires ? `valid until ${new Date(link.expires * 1000).toLocaleString()}` : 'never expires';
  return `Created ${new Date(link.issued * 1000).toLocaleString()}; ${until}.`;
}

/** What the editor says when the server closed the session with 4001: revoked, expired, or not valid. */
export function deniedText(reason, claims, now = Date.now()) {
  const why = typeof reason === 'string' ? reason : '';
  if (why.includes('revoked')) {
    return 'Access removed: this link was revoked by someone who shares this document. Ask for a new link.';
  }
  if (why.includes('expired') || (claims && typeof claims.exp === 'number' && claims.exp * 1000 <= now)) {
    const when = claims && typeof claims.exp === 'number' ? ` on ${new Date(claims.exp * 1000).toLocaleString()}` : '';
    return `Access denied: this link expired${when}. Ask for a new link.`;
  }
  return 'Access denied: this link is not valid (mistyped, or for another server). Ask for a new link.';
}
