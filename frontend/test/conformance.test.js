// The client conformance suite, replayed against the browser client.
//
// tests/conformance/client.json holds transcripts: server messages in,
// client messages and the resulting state out. This file drives SyncClient
// through them without a socket; tests/test_conformance.py drives the Python
// client (collab/clientstate.py) through the same file, so both clients pass
// the same cases. The file's `format` entry describes steps and expectations.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { SyncClient } from '../src/client.js';
import { apply, cpLength, fromSplice, transformCursor } from '../src/ot.js';
import { jsonBytes } from '../src/split.js';

const DATA = JSON.parse(readFileSync(new URL('../../tests/conformance/client.json', import.meta.url), 'utf8'));

/** `expected` matches `actual` where every key of an expected object is equal in `actual`. */
function subset(expected, actual) {
  if (expected && typeof expected === 'object' && !Array.isArray(expected)) {
    return !!actual && typeof actual === 'object'
      && Object.entries(expected).every(([k, v]) => k in actual && subset(v, actual[k]));
  }
  try {
    assert.deepStrictEqual(actual, expected);
    return true;
  } catch {
    return false;
  }
}

/** An editor holding a plain string and the peer cursors it draws, as the page does. */
class Editor {
  constructor() {
    this.text = '';
    this.cursor = null;
    this.peerCursors = new Map();
  }

  /** Map every selection through `op` (a change to the text). */
  _map(op) {
    if (this.cursor) this.cursor = transformCursor(this.cursor, op);
    for (const [id, c] of this.peerCursors) if (c) this.peerCursors.set(id, transformCursor(c, op));
  }

  applyRemote(op) {
    this.text = apply(this.text, op);
    this._map(op);
  }

  getCursor() {
    return this.cursor;
  }
}

class Replay {
  constructor(c) {
    let n = 0;
    this.editor = new Editor();
    this.client = new SyncClient({ editor: this.editor, user: c.user || null, newId: () => `x-${++n}` });
    this.sent = [];
    this.signals = [];
    const on = (event, f) => this.client.on(event, f);
    on('refused', (msg) => this.signals.push(`refused:${msg.code}`));
    on('server-error', (msg) => this.signals.push(`error:${msg.code}`));
    on('resync', () => this.signals.push('reconnect'));
    on('retry', () => this.signals.push('retry'));
    on('too-large', () => this.signals.push('too_large'));
    on('cursor', (id, cursor) => this.editor.peerCursors.set(id, cursor));
  }

  localEdit(op) {
    this.editor.text = apply(this.editor.text, op);
    this.editor._map(op);
    this.client.localEdit(op, this.editor.cursor);
  }

  do(step) {
    const { client, editor } = this;
    if ('connect' in step) {
      client.connected((msg) => this.sent.push(JSON.parse(JSON.stringify(msg))));
    } else if ('disconnect' in step) {
      client.disconnected(step.disconnect);
      editor.peerCursors.clear();
    } else if ('receive' in step) {
      client.receive(JSON.parse(JSON.stringify(step.receive)));
    } else if ('edit' in step) {
      this.localEdit(step.edit);
    } else if ('insert' in step) {
      const { at, text, times = 1 } = step.insert;
      this.localEdit(fromSplice(cpLength(editor.text), at, 0, text.repeat(times)));
    } else if ('cursor' in step) {
      editor.cursor = step.cursor;
      client.localCursor(step.cursor);
    } else if ('resend' in step) {
      client.resend();
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
    for (const m of this.sent) {
      if (m.type === 'op') {
        assert.ok(jsonBytes(m) <= client.maxMessageBytes, `an op message of ${jsonBytes(m)} bytes, over ${client.maxMessageBytes}`);
      }
    }
  }

  check(step, where) {
    const { client, editor } = this;
    const sent = this.sent.splice(0);
    const signals = this.signals.splice(0);
    const expected = step.send || [];
    assert.ok(sent.length === expected.length && expected.every((e, i) => subset(e, sent[i])),
      `${where}: sent ${JSON.stringify(sent)}, expected ${JSON.stringify(expected)}`);
    assert.deepEqual(signals, step.signals || [], `${where}: signals`);
    if ('text' in step) assert.equal(editor.text, step.text, where);
    if ('rev' in step) assert.equal(client.rev, step.rev, where);
    if ('saved' in step) assert.equal(client.saved, step.saved, where);
    if ('limit' in step) assert.equal(client.maxMessageBytes, step.limit, where);
    for (const [id, cursor] of Object.entries(step.cursors || {})) {
      assert.deepEqual(editor.peerCursors.get(id) ?? null, cursor, `${where}: cursor of ${id}`);
    }
    if (!client.resolving) {
      const pending = client.pending;
      assert.equal(editor.text, pending ? apply(client.serverText, pending) : client.serverText, `${where}: text != server + pending`);
    }
  }
}

for (const c of DATA.cases) {
  test(`conformance: ${c.name}`, () => {
    const replay = new Replay(c);
    c.steps.forEach((step, i) => {
      replay.do(step);
      replay.check(step, `${c.name}, step ${i + 1}`);
    });
  });
}
