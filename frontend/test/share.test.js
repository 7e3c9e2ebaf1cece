// Share links: which roles to ask for, minting through a fake fetch, and the
// menu's summary of the server's answers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  tokenClaims, rolesToAsk, absoluteLink, mintLink, refusalText, summarize, copiedText, expiryText,
  listLinks, revokeLink, activeLinks, linkLabel, linkDetails, deniedText,
} from '../src/share.js';

const ORIGIN = 'http://127.0.0.1:8000';

function jwt(claims) {
  const enc = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}.c2lnbmF0dXJl`;
}

function fakeFetch(status, body, calls = []) {
  return async (url, init) => {
    calls.push({ url, init });
    return {
      ok: status >= 200 && status < 300,
      status,
      json: async () => {
        if (typeof body === 'string') throw new SyntaxError('not JSON');
        return body;
      },
    };
  };
}

test('tokenClaims decodes a JWT payload (base64url, UTF-8) and rejects anything else', () => {
  assert.deepEqual(tokenClaims(jwt({ role: 'read', docs: ['n'], name: 'Zoë 😀' })), { role: 'read', docs: ['n'], name: 'Zoë 😀' });
  for (const bad of [null, undefined, '', 'abc', 'a.b', 'a.!!.c', `x.${Buffer.from('[1]').toString('base64url')}.y`, 'a.bm90IGpzb24.c']) {
    assert.equal(tokenClaims(bad), null, String(bad));
  }
});

test('rolesToAsk: nothing without a token, never edit for a read viewer', () => {
  assert.deepEqual(rolesToAsk(null, 'edit'), []);
  assert.deepEqual(rolesToAsk('', null), []);
  assert.deepEqual(rolesToAsk(jwt({ role: 'edit' }), null), ['edit', 'read']);
  assert.deepEqual(rolesToAsk(jwt({ role: 'edit' }), 'edit'), ['edit', 'read']);
  assert.deepEqual(rolesToAsk(jwt({ role: 'edit' }), 'read'), ['read']);
  assert.deepEqual(rolesToAsk(jwt({ role: 'read' }), null), ['read']);
  assert.deepEqual(rolesToAsk(jwt({ role: 'read' }), 'edit'), ['read']);
  assert.deepEqual(rolesToAsk('opaque-token', null), ['edit', 'read'], 'the server decides for tokens we cannot read');
});

test('absoluteLink accepts same-origin paths only', () => {
  assert.equal(absoluteLink('/d/notes#token=abc', ORIGIN), `${ORIGIN}/d/notes#token=abc`);
  assert.equal(absoluteLink('/d/notes', `${ORIGIN}/`), `${ORIGIN}/d/notes`);
  for (const bad of [null, 42, '', 'd/notes', '//evil.test/d/x', '/\\evil.test', 'https://evil.test/d/x', 'javascript:alert(1)']) {
    assert.equal(absoluteLink(bad, ORIGIN), null, String(bad));
  }
});

test('mintLink posts the role with the token as a Bearer header and returns the absolute link', async () => {
  const calls = [];
  const r = await mintLink({
    doc: 'team notes', role: 'read', token: 'tok', origin: ORIGIN,
    fetchImpl: fakeFetch(200, { role: 'read', token: 'x', url: '/d/team%20notes#token=x', expires: 1767225600, id: 'j1' }, calls),
  });
  assert.deepEqual(r, { ok: true, role: 'read', href: `${ORIGIN}/d/team%20notes#token=x`, expires: 1767225600, id: 'j1' });
  assert.equal(calls.length, 1);
  assert.equal(calls[0].url, '/api/docs/team%20notes/share');
  assert.equal(calls[0].init.method, 'POST');
  assert.equal(calls[0].init.headers.Authorization, 'Bearer tok');
  assert.deepEqual(JSON.parse(calls[0].init.body), { role: 'read' });
  assert.ok(!calls[0].url.includes('tok'), 'the token stays out of the URL');
});

test('mintLink: open server edit link (no token, no expiry), refusals and failures never throw', async () => {
  const open = await mintLink({
    doc: 'n', role: 'edit', token: null, origin: ORIGIN,
    fetchImpl: fakeFetch(200, { role: 'edit', token: null, url: '/d/n', expires: null }),
  });
  assert.deepEqual(open, { ok: true, role: 'edit', href: `${ORIGIN}/d/n`, expires: null, id: null });
  const forbidden = await mintLink({
    doc: 'n', role: 'edit', token: 't', origin: ORIGIN,
    fetchImpl: fakeFetch(403, { error: 'forbidden', message: 'this token may not create edit links' }),
  });
  assert.deepEqual(forbidden, { ok: false, role: 'edit', status: 403, message: 'this token may not create edit links' });
  const html = await mintLink({ doc: 'n', role: 'read', token: 't', origin: ORIGIN, fetchImpl: fakeFetch(502, '<h1>Bad gateway</h1>') });
  assert.deepEqual(html, { ok: false, role: 'read', status: 502, message: '' });
  const down = await mintLink({
    doc: 'n', role: 'read', token: 't', origin: ORIGIN, fetchImpl: async () => { throw new TypeError('Failed to fetch'); },
  });
  assert.deepEqual(down, { ok: false, role: 'read', status: 0, message: 'Failed to fetch' });
  const evil = await mintLink({
    doc: 'n', role: 'read', token: 't', origin: ORIGIN, fetchImpl: fakeFetch(200, { role: 'read', url: 'https://evil.test/' }),
  });
  assert.equal(evil.ok, false);
  assert.equal(evil.status, 0);
});

test('summarize: granted links by role, silent 403, explained 400/401/other', () => {
  const edit = { ok: true, role: 'edit', href: `${ORIGIN}/d/n#token=e`, expires: null };
  const read = { ok: true, role: 'read', href: `${ORIGIN}/d/n#token=r`, expires: null };
  assert.deepEqual(summarize([edit, read]), { links: { edit, read }, note: null });
  assert.deepEqual(summarize([{ ok: false, role: 'edit', status: 403, message: 'no' }, read]), { links: { read }, note: null });
  const none = summarize([{ ok: false, role: 'edit', status: 403, message: '' }, { ok: false, role: 'read', status: 403, message: '' }]);
  assert.deepEqual(none.links, {});
  assert.match(none.note, /does not allow sharing/);
  const open = summarize([edit, { ok: false, role: 'read', status: 400, message: 'read-only links need a secret' }]);
  assert.deepEqual(open.links, { edit });
  assert.match(open.note, /secret on the server/);
  assert.match(summarize([{ ok: false, role: 'read', status: 401, message: 'token expired' }]).note, /expired/);
  const odd = summarize([{ ok: false, role: 'read', status: 500, message: '<img src=x onerror=alert(1)>' }]);
  assert.equal(odd.note, 'The server could not create a link (HTTP 500: <img src=x onerror=alert(1)>).');
  assert.equal(refusalText({ ok: false, role: 'read', status: 0, message: 'x'.repeat(500) }).length < 300, true);
});

test('confirmation and expiry texts', () => {
  assert.equal(copiedText('read'), 'Read-only link copied');
  assert.equal(copiedText('edit'), 'Edit link copied');
  assert.equal(copiedText(null), 'Link copied');
  assert.match(expiryText(1767225600), /^Valid until /);
  assert.match(expiryText(null), /does not expire/);
});

test('listLinks and revokeLink call the API with the token as a Bearer header and never throw', async () => {
  const calls = [];
  const rows = [
    { id: 'a', role: 'edit', issued: 10, expires: null, by: 'Ada 🦊', revoked: null },
    { id: 'b', role: 'admin', issued: 11, expires: null, by: null, revoked: null },
  ];
  const listed = await listLinks({ doc: 'n 🦊', token: 'tok', fetchImpl: fakeFetch(200, rows, calls) });
  assert.deepEqual(listed, { ok: true, links: [rows[0]] }, 'an unknown role is dropped');
  assert.equal(calls[0].url, `/api/docs/${encodeURIComponent('n 🦊')}/links`);
  assert.equal(calls[0].init.headers.Authorization, 'Bearer tok');
  assert.deepEqual(await listLinks({ doc: 'n', token: 't', fetchImpl: fakeFetch(403, 'nope') }),
    { ok: false, status: 403, message: '' });
  const thrown = await listLinks({ doc: 'n', token: 't', fetchImpl: async () => { throw new Error('offline'); } });
  assert.equal(thrown.status, 0);

  const revokes = [];
  assert.deepEqual(await revokeLink({ id: 'a', token: 'tok', fetchImpl: fakeFetch(200, {}, revokes) }), { ok: true });
  assert.equal(revokes[0].url, '/api/tokens/revoke');
  assert.deepEqual(JSON.parse(revokes[0].init.body), { id: 'a' });
  assert.deepEqual(await revokeLink({ id: 'a', token: 't', fetchImpl: fakeFetch(403, { message: 'no 🙅' }) }),
    { ok: false, status: 403, message: 'no 🙅' });
});

test('activeLinks keeps the unrevoked, unexpired links, newest first; linkLabel names role and sharer', () => {
  const now = 1000 * 1000;
  const links = [
    { id: 'old', role: 'read', issued: 1, expires: null, revoked: null },
    { id: 'new', role: 'edit', issued: 5, expires: 2000, by: 'Ada 🦊', revoked: null },
    { id: 'gone', role: 'edit', issued: 6, expires: null, revoked: 7 },
    { id: 'past', role: 'edit', issued: 7, expires: 999, revoked: null },
  ];
  assert.deepEqual(activeLinks(links, now).map((l) => l.id), ['new', 'old']);
  assert.match(linkLabel(links[1]), /^Edit link by Ada 🦊 · .+ → .+/);
  assert.match(linkLabel(links[0]), /^Read-only link · .+, no expiry$/);
  assert.match(linkDetails(links[1]), /^Created .+; valid until .+\.$/);
  assert.match(linkDetails(links[0]), /; never expires\.$/);
});

test('deniedText tells revoked, expired and invalid apart', () => {
  assert.match(deniedText('this link was revoked: ask for a new one', null), /was revoked/);
  assert.match(deniedText('token expired', null), /expired\. Ask/);
  assert.match(deniedText('', { exp: 10 }, 20000), /expired on/);
  assert.match(deniedText('invalid token', { exp: 10 ** 12 }), /not valid/);
});
