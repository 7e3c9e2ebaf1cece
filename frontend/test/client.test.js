// The sync client in random sessions against an in-memory server: concurrent
// edits, dropped connections, lost acks and short history converge without
// losing or duplicating text. Scenario cases are transcripts in
// tests/conformance/client.json (test/conformance.test.js).
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

