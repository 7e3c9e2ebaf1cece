// Large edits: splitting operations under a message size limit, and the
// client's recovery from closes for size in random sessions. The scenario
// cases (pieces under max_message_bytes, 1009, 1006 twice) are transcripts
// in tests/conformance/client.json (test/conformance.test.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { splitOp, jsonBytes, jsonStringBytes } from '../src/split.js';
import { SyncClient } from '../src/client.js';
import { apply, compose, cpLength, fromSplice, validate, normalize } from '../src/ot.js';
import { FakeServer, FakeEditor } from './fake_server.js';
import { rng, randomOp } from './helpers.js';

const utf8 = (v) => Buffer.byteLength(JSON.stringify(v), 'utf8');
const NASTY = ['a', 'b', ' ', '\n', '\t', '"', '\\', '\u0001', '\u001f', 'é', '中', '😀', '🎉', '\u2028', '\ud800', '\udc00'];

function nastyText(r, n) {
  let s = '';
  for (let i = 0; i < n; i++) s += r.pick(NASTY);
  return s;
}

test('jsonBytes and jsonStringBytes count the UTF-8 bytes of JSON.stringify, escapes and lone surrogates included', () => {
  const r = rng(7);
  for (let i = 0; i < 300; i++) {
    const s = nastyText(r, r.int(40));
    assert.equal(jsonStringBytes(s), utf8(s), JSON.stringify(s));
    const msg = { type: 'op', rev: r.int(1e6), op: [r.int(50) + 1, s || 'x'], id: 'id-é', cursor: null };
    assert.equal(jsonBytes(msg), utf8(msg));
  }
});

test('splitOp: every piece fits, pieces apply one after another to the same result, surrogate pairs never split', () => {
  const r = rng(11);
  for (let i = 0; i < 400; i++) {
    // A base text, and an op with several inserts (nasty characters) and deletes.
    const base = nastyText(r, r.int(30)).replace(/[\ud800-\udfff]/g, '😀');
    let op = [cpLength(base)].filter((n) => n > 0);
    let text = base;
    for (let j = 0; j < 1 + r.int(4); j++) {
      const len = cpLength(text);
      const pos = r.int(len + 1);
      const ins = nastyText(r, r.int(60)).replace(/[\ud800-\udfff]/g, 'é');
      const step = fromSplice(len, pos, r.int(Math.min(3, len - pos) + 1), ins);
      op = op.length ? compose(op, step) : step;
      text = apply(text, step);
    }
    if (op.length === 0) continue;
    const budget = 30 + r.int(80);
    let rest = op;
    let cur = base;
    let pieces = 0;
    for (;;) {
      const { head, tail, bytes } = splitOp(rest, budget);
      validate(head, cpLength(cur));
      assert.ok(utf8(head) <= Math.max(budget, bytes), `piece of ${utf8(head)} bytes over ${budget}`);
      assert.ok(bytes >= utf8(head) - 0, 'reported size is not below the real one');
      if (tail) assert.ok(utf8(head) <= budget, `piece of ${utf8(head)} bytes over ${budget}: ${JSON.stringify(head)}`);
      cur = apply(cur, head);
      pieces++;
      assert.ok(pieces < 10000, 'no progress');
      if (!tail) break;
      validate(tail, cpLength(cur));
      assert.deepEqual(normalize(compose(head, tail)), normalize(rest));
      rest = tail;
    }
    assert.equal(cur, text);
  }
});

test('splitOp: an op that fits is returned whole; a tiny budget still makes progress', () => {
  assert.deepEqual(splitOp([3, 'abc', -2, 4], 1000).tail, null);
  const { head, tail } = splitOp(['😀😀😀'], 1);
  assert.deepEqual(head, ['😀']);
  assert.deepEqual(tail, [1, '😀😀']);
  // Retains alone never make a piece.
  const s = splitOp([123456, 'xyzw', 7], 12);
  assert.ok(s.head.some((c) => typeof c === 'string'), JSON.stringify(s.head));
});

test('splitOp peels a 1.5 MB insert into 1 KB pieces, each appending to the previous ones', () => {
  const big = 'abcdefghi😀'.repeat(150_000);
  let rest = [big];
  const parts = [];
  let done = 0;
  let n = 0;
  for (;;) {
    const { head, tail } = splitOp(rest, 1024);
    // Each piece appends to what the previous ones wrote.
    const ins = head.find((c) => typeof c === 'string');
    assert.deepEqual(head, done ? [done, ins] : [ins]);
    parts.push(ins);
    done += cpLength(ins);
    n++;
    if (!tail) break;
    rest = tail;
  }
  assert.equal(parts.join(''), big);
  assert.ok(n > 1000, `${n} pieces`);
});

// ---- the client ------------------------------------------------------------

let counter = 0;
function makeClient(name, opts = {}) {
  const editor = new FakeEditor();
  const client = new SyncClient({ editor, user: { name, color: '#123456' }, newId: () => `${name}-${++counter}`, ...opts });
  client.on('resync', () => { client.wantsResync = true; });
  const events = [];
  client.on('too-large', (info) => events.push(info));
  return { editor, client, name, events };
}

function type(p, pos, text) {
  const op = fromSplice(cpLength(p.editor.text), pos, 0, text);
  p.editor.text = apply(p.editor.text, op);
  p.client.localEdit(op, null);
}

/** Settle; reconnect every connection closed for size, as the session does. */
function settleWithReconnects(server, peers, conns, maxRounds = 100) {
  let reconnects = 0;
  for (let i = 0; i < maxRounds; i++) {
    server.settle();
    if (!server.closeRefused()) return reconnects;
    for (const p of peers) {
      if (!server.conns.has(conns.get(p))) {
        conns.set(p, server.connect(p.client));
        reconnects++;
      }
    }
  }
  throw new Error('still closing for size');
}

test('random: large edits, remote edits and size closes converge without losing text', () => {
  for (let seed = 1; seed <= 8; seed++) {
    const r = rng(seed);
    let k = 0;
    const server = new FakeServer({ maxMessageBytes: 3000, closeCode: () => (k++ % 2 ? 1006 : 1009) });
    const a = makeClient('a', { forceMaxMessageBytes: 20_000 });
    const b = makeClient('b');
    const conns = new Map([[a, server.connect(a.client)], [b, server.connect(b.client)]]);
    server.settle();
    for (let step = 0; step < 12; step++) {
      const p = r() < 0.5 ? a : b;
      if (r() < 0.3) {
        const big = `<${seed}-${step}>${'😀ab"\n'.repeat(r.int(1500))}</${seed}-${step}>`;
        type(p, r.int(cpLength(p.editor.text) + 1), big);
      } else {
        const op = randomOp(r, p.editor.text);
        p.editor.text = apply(p.editor.text, op);
        p.client.localEdit(op, null);
      }
      if (r() < 0.5) settleWithReconnects(server, [a, b], conns);
    }
    settleWithReconnects(server, [a, b], conns);
    assert.equal(a.editor.text, server.text, `seed ${seed}`);
    assert.equal(b.editor.text, server.text, `seed ${seed}`);
    assert.ok(a.client.saved && b.client.saved);
    assert.equal(new Set(server.log.map((e) => e.id)).size, server.log.length, 'ids unique');
    assert.ok(server.frames.every((n) => n <= 3000));
  }
});
