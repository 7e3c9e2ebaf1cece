import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SyncClient } from '../src/client.js';
import { apply, fromSplice, cpLength } from '../src/ot.js';
import { FakeServer, FakeEditor } from './fake_server.js';
import { rng, randomOp } from './helpers.js';

let counter = 0;
function makeClient(name) {
  const editor = new FakeEditor();
  const client = new SyncClient({ editor, user: { name, color: '#123456' }, newId: () => `${name}-${++counter}` });
  client.on('resync', () => { client.wantsResync = true; });
  return { editor, client, name };
}

function type(p, pos, text) {
  const op = fromSplice(cpLength(p.editor.text), pos, 0, text);
  p.editor.text = apply(p.editor.text, op);
  p.client.localEdit(op, null);
}

test('state machine: synchronized -> awaiting confirm -> awaiting with buffer -> synchronized', () => {
  const server = new FakeServer();
  const a = makeClient('a');
  const conn = server.connect(a.client);
  server.settle();
  assert.equal(a.client.rev, 0);
  assert.ok(a.client.saved);
  type(a, 0, 'x');
  assert.ok(a.client.outstanding && !a.client.buffer);
  type(a, 1, 'y');
  type(a, 2, '😀');
  assert.ok(a.client.outstanding && a.client.buffer);
  assert.deepEqual(a.client.buffer, [1, 'y😀']);
  server.pumpServer(conn);
  server.pumpClient(conn);
  assert.ok(a.client.outstanding && !a.client.buffer);
  server.settle();
  assert.ok(a.client.saved);
  assert.equal(server.text, 'xy😀');
  assert.equal(a.client.rev, 2);
});

test('concurrent typing at the same spot with emoji converges', () => {
  const server = new FakeServer();
  const a = makeClient('a');
  const b = makeClient('b');
  server.connect(a.client);
  server.connect(b.client);
  server.settle();
  type(a, 0, '😀a');
  type(b, 0, '🎉b');
  type(a, 2, '1');
  type(b, 1, '2');
  server.settle();
  assert.equal(a.editor.text, server.text);
  assert.equal(b.editor.text, server.text);
  assert.equal(cpLength(server.text), 6);
});

test('remote cursors are moved through pending local ops', () => {
  const server = new FakeServer();
  const a = makeClient('a');
  const b = makeClient('b');
  server.connect(a.client);
  server.connect(b.client);
  server.settle();
  type(a, 0, 'hello');
  server.settle();
  const seen = [];
  b.client.on('cursor', (client, cursor) => seen.push(cursor));
  a.editor.cursor = { anchor: 5, head: 5 };
  a.client.localCursor({ anchor: 5, head: 5 });
  // b types before the caret without the server seeing it yet.
  type(b, 0, '😀😀');
  const cb = [...server.conns].find((c) => c.client === b.client);
  const ca = [...server.conns].find((c) => c.client === a.client);
  server.pumpServer(ca); // presence reaches the server first
  server.pumpClient(cb, 1); // b receives a's presence while its op is pending
  assert.deepEqual(seen.at(-1), { anchor: 7, head: 7 });
  assert.equal(b.client.saved, false);
  server.settle();
});

test('no presence is sent while an op is unacknowledged', () => {
  const server = new FakeServer();
  const a = makeClient('a');
  const conn = server.connect(a.client);
  server.settle();
  type(a, 0, 'abc');
  a.client.localCursor({ anchor: 1, head: 1 });
  assert.deepEqual(conn.toServer.map((m) => m.type), ['op']);
  server.settle();
  a.client.localCursor({ anchor: 1, head: 1 });
  assert.equal(conn.toServer.at(-1).type, 'presence');
});

test('reconnect: own op found in welcome.ops by id counts as ack', () => {
  const server = new FakeServer();
  const a = makeClient('a');
  const b = makeClient('b');
  let ca = server.connect(a.client);
  server.connect(b.client);
  server.settle();
  type(a, 0, 'A');
  server.disconnect(ca, true); // op applied, ack lost
  type(a, 1, 'B'); // typing goes on offline
  type(b, 0, 'z');
  server.settle();
  assert.ok(!a.client.saved);
  ca = server.connect(a.client);
  server.settle();
  assert.ok(a.client.saved);
  assert.equal(server.text, 'zAB');
  assert.equal(a.editor.text, 'zAB');
  assert.equal(b.editor.text, 'zAB');
  assert.equal(server.log.length, 3); // A was not applied twice
});

test('reconnect: lost op is resent with its id and applied once', () => {
  const server = new FakeServer();
  const a = makeClient('a');
  let ca = server.connect(a.client);
  server.settle();
  type(a, 0, 'A');
  const id = a.client.outstanding.id;
  server.disconnect(ca, false); // op never arrived
  ca = server.connect(a.client);
  server.settle();
  assert.equal(server.text, 'A');
  assert.equal(server.log[0].id, id);
});

for (const applied of [true, false]) {
  test(`long absence (welcome.text), resend ${applied ? 'was' : 'was not'} applied: local edits are rebased`, () => {
    const server = new FakeServer({ historyDepth: 2 });
    const a = makeClient('a');
    const b = makeClient('b');
    let ca = server.connect(a.client);
    server.connect(b.client);
    type(b, 0, 'one two three');
    server.settle();
    type(a, 4, 'X'); // outstanding
    server.disconnect(ca, applied);
    type(a, 0, 'Y'); // buffered while offline
    for (let i = 0; i < 4; i++) { type(b, cpLength(b.editor.text), `${i}`); server.settle(); }
    type(b, 0, '>'); server.settle();
    ca = server.connect(a.client);
    server.pumpServer(ca);
    assert.ok('text' in ca.toClient[0], 'welcome carries text');
    server.settle();
    assert.equal(a.editor.text, server.text);
    assert.equal(b.editor.text, server.text);
    assert.equal(server.text, 'Y>one Xtwo three0123'); // on a tie the local insert goes first
    assert.equal(server.log.filter((e) => e.id && e.id.startsWith('a-')).length, applied ? 2 : 1);
    assert.ok(a.client.saved);
  });
}

test('random simulation: concurrent edits, drops and reconnects converge without losing inserts', () => {
  const r = rng(1234);
  for (let round = 0; round < 30; round++) {
    const server = new FakeServer({ historyDepth: r() < 0.5 ? 3 : Infinity });
    const peers = ['a', 'b', 'c'].map(makeClient);
    const conns = new Map(peers.map((p) => [p, server.connect(p.client)]));
    server.settle();
    const markers = [];
    let mk = 0;
    for (let step = 0; step < 150; step++) {
      const p = r.pick(peers);
      const x = r();
      const conn = conns.get(p);
      if (x < 0.45) {
        // insert-only edits of unique single characters (half of them emoji),
        // so we can check that nothing is lost or duplicated
        mk++;
        const m = String.fromCodePoint(mk % 2 ? 0x1f300 + mk : 0x4e00 + mk);
        markers.push(m);
        type(p, r.int(cpLength(p.editor.text) + 1), m);
      } else if (x < 0.7) {
        if (conn) server.pumpServer(conn);
      } else if (x < 0.9) {
        if (conn) server.pumpClient(conn, 1 + r.int(3));
      } else if (x < 0.95) {
        if (conn) { server.disconnect(conn, r() < 0.5); conns.set(p, null); }
      } else if (!conn) {
        conns.set(p, server.connect(p.client));
      }
      if (p.client.wantsResync && conns.get(p)) {
        p.client.wantsResync = false;
        server.disconnect(conns.get(p), false);
        conns.set(p, server.connect(p.client));
      }
    }
    for (let i = 0; i < 5; i++) {
      for (const p of peers) {
        if (!conns.get(p) || p.client.wantsResync) {
          if (conns.get(p)) server.disconnect(conns.get(p));
          p.client.wantsResync = false;
          conns.set(p, server.connect(p.client));
        }
      }
      server.settle();
    }
    for (const p of peers) {
      assert.equal(p.editor.text, server.text, `round ${round}: ${p.name} diverged`);
      assert.ok(p.client.saved);
    }
    assert.equal(cpLength(server.text), markers.length, `round ${round}: lost or duplicated`);
    for (const m of markers) assert.ok(server.text.includes(m), `round ${round}: lost ${m}`);
  }
});

test('random simulation with deletes converges', () => {
  const r = rng(99);
  for (let round = 0; round < 30; round++) {
    const server = new FakeServer({ historyDepth: 4 });
    const peers = ['a', 'b'].map(makeClient);
    const conns = new Map(peers.map((p) => [p, server.connect(p.client)]));
    server.settle();
    for (let step = 0; step < 100; step++) {
      const p = r.pick(peers);
      const conn = conns.get(p);
      const x = r();
      if (x < 0.4) {
        const op = randomOp(r, p.editor.text);
        p.editor.text = apply(p.editor.text, op);
        p.client.localEdit(op, null);
      } else if (x < 0.6) { if (conn) server.pumpServer(conn); }
      else if (x < 0.85) { if (conn) server.pumpClient(conn, 1 + r.int(2)); }
      else if (x < 0.93) { if (conn) { server.disconnect(conn, r() < 0.5); conns.set(p, null); } }
      else if (!conn) conns.set(p, server.connect(p.client));
    }
    for (const p of peers) {
      if (conns.get(p)) server.disconnect(conns.get(p));
      p.client.wantsResync = false;
      conns.set(p, server.connect(p.client));
    }
    server.settle();
    for (const p of peers) assert.equal(p.editor.text, server.text, `round ${round}`);
  }
});

test('batch frames are unpacked in order, and join asks for them', async () => {
  const p = makeClient('batcher');
  const sent = [];
  p.client.connected((m) => sent.push(m));
  assert.equal(sent[0].type, 'join');
  assert.equal(sent[0].batch, true);
  p.client.receive({ type: 'welcome', client: 'me', rev: 0, role: 'edit', peers: [], text: 'ab' });
  p.client.receive({ type: 'batch', messages: [
    { type: 'op', rev: 1, op: [2, '😀'], client: 'o', cursor: null },
    { type: 'op', rev: 2, op: ['x', 3], client: 'o', cursor: null },
  ] });
  assert.equal(p.editor.text, 'xab😀');
  assert.equal(p.client.rev, 2);
});
