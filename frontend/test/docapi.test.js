// The lifecycle API helpers: what they send, how they read answers and refusals, and the sizes they print.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTitle, renameDoc, trashDoc, listDocs, failureText, formatBytes, purgeText } from '../src/docapi.js';

function fakeFetch(status, body, seen) {
  return async (url, init) => {
    seen.push({ url, init });
    return { ok: status < 400, status, text: async () => (typeof body === 'string' ? body : JSON.stringify(body)) };
  };
}

test('calls carry the token as a bearer header and the body as JSON', async () => {
  const seen = [];
  const r = await setTitle('notes', 'Füchse 🦊', { token: 't0k', fetchImpl: fakeFetch(200, { id: 'notes', title: 'Füchse 🦊' }, seen) });
  assert.deepEqual(r, { ok: true, status: 200, body: { id: 'notes', title: 'Füchse 🦊' } });
  assert.equal(seen[0].url, '/api/docs/notes/title');
  assert.equal(seen[0].init.method, 'POST');
  assert.equal(seen[0].init.headers.Authorization, 'Bearer t0k');
  assert.deepEqual(JSON.parse(seen[0].init.body), { title: 'Füchse 🦊' });
  await trashDoc('a.b', { fetchImpl: fakeFetch(200, {}, seen) });
  assert.equal(seen[1].init.method, 'DELETE');
  assert.equal(seen[1].init.headers.Authorization, undefined, 'no token: no header');
});

test('refusals keep the server message, JSON or plain text, and never throw', async () => {
  const seen = [];
  let r = await renameDoc('a', 'b', { fetchImpl: fakeFetch(409, { error: 'conflict', message: "'b' is taken" }, seen) });
  assert.deepEqual(r, { ok: false, status: 409, message: "'b' is taken" });
  r = await renameDoc('a', 'b', { fetchImpl: fakeFetch(403, 'this token may not edit the new name', seen) });
  assert.equal(r.message, 'this token may not edit the new name');
  r = await renameDoc('a', 'b', { fetchImpl: async () => { throw new TypeError('Failed to fetch'); } });
  assert.deepEqual(r, { ok: false, status: 0, message: 'Failed to fetch' });
  assert.match(failureText('rename it', r), /could not be reached.*Try again/);
  assert.match(failureText('rename it', { status: 409, message: "'b' is taken" }), /^Could not rename it: 'b' is taken\.$/);
});

test('the document list is read page by page, following Link', async () => {
  const seen = [];
  const pages = {
    '/api/docs': [[{ id: 'a', title: 'Füchse 🦊' }, { id: 'b' }], '</api/docs?limit=2&after=WzEsImIiXQ>; rel="next"'],
    '/api/docs?limit=2&after=WzEsImIiXQ': [[{ id: 'c' }], null],
  };
  const fetchImpl = async (url, init) => {
    seen.push({ url, init });
    const [body, link] = pages[url];
    return { ok: true, status: 200, headers: { get: (n) => (n === 'Link' ? link : null) }, text: async () => JSON.stringify(body) };
  };
  const r = await listDocs({ token: 't0k', fetchImpl });
  assert.deepEqual(r, { ok: true, status: 200, body: [{ id: 'a', title: 'Füchse 🦊' }, { id: 'b' }, { id: 'c' }] });
  assert.deepEqual(seen.map((s) => s.url), ['/api/docs', '/api/docs?limit=2&after=WzEsImIiXQ']);
  assert.equal(seen[1].init.headers.Authorization, 'Bearer t0k');
  const refused = await listDocs({ fetchImpl: fakeFetch(401, 'token expired', []) });
  assert.deepEqual(refused, { ok: false, status: 401, message: 'token expired' });
});

test('sizes in bytes read as people expect', () => {
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(999), '999 B');
  assert.equal(formatBytes(1600), '1.6 kB');
  assert.equal(formatBytes(72_000), '72.0 kB');
  assert.equal(formatBytes(123_456), '123 kB');
  assert.equal(formatBytes(999_600), '1.0 MB');
  assert.equal(formatBytes(2_000_000), '2.0 MB');
  assert.equal(formatBytes(-1), '');
});

test('when a trashed document is purged', () => {
  const now = Date.UTC(2026, 0, 1);
  assert.equal(purgeText(now / 1000 + 30 * 86400 - 5, now), 'purged in 30 days');
  assert.equal(purgeText(now / 1000 + 86400 + 5, now), 'purged in 1 day');
  assert.equal(purgeText(now / 1000 + 3600, now), 'purged within a day');
  assert.equal(purgeText(null, now), '');
});
