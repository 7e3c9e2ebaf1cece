import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Text } from '@codemirror/state';
import { emojiClusterStart } from '../src/grapheme.js';
import { excerptRange, BIG_DOC, EXCERPT_LINES } from '../src/preview.js';

test('Backspace takes a whole emoji sequence, and leaves other clusters to CodeMirror', () => {
  const end = (s) => emojiClusterStart(s, s.length);
  assert.equal(end('hi 👋🏽'), 3); // skin tone
  assert.equal(end('x👨‍👩‍👧'), 1); // joined family
  assert.equal(end('🇫🇷'), 0); // flag
  assert.equal(end('a❤️'), 1); // variation selector
  assert.equal(end('a😀'), null); // one code point: CodeMirror's Backspace already takes it whole
  assert.equal(end('e\u0301'), null); // a combining accent goes on its own
  assert.equal(end(''), null);
});

test('the preview renders a small document whole and an excerpt of a large one', () => {
  const small = Text.of(['# a', '', 'b']);
  assert.deepEqual(excerptRange(small, 2), { from: 1, to: 3, whole: true });
  const lines = Array.from({ length: 40000 }, (_, i) => (i % 10 === 0 ? '' : `line ${i} with some words`));
  const big = Text.of(lines);
  assert.ok(big.length > BIG_DOC);
  const r = excerptRange(big, 20000);
  assert.equal(r.whole, false);
  assert.ok(r.from <= 20000 - 40 && r.from >= 20000 - 140, JSON.stringify(r));
  assert.equal(big.line(r.from).text, ''); // starts at a blank line: a block boundary
  assert.equal(r.to - r.from + 1, EXCERPT_LINES);
  assert.equal(excerptRange(big, 1).from, 1);
  assert.equal(excerptRange(big, big.lines).to, big.lines);
});

test('retry now connects at once while a reconnect waits, not while the browser is offline', async () => {
  const { Session } = await import('../src/session.js');
  const opened = [];
  class FakeWs {
    constructor(url) { this.url = url; this.readyState = 0; opened.push(this); }
    close() {}
    send() {}
  }
  const client = { rev: null, on() {}, connected() {}, disconnected() {} };
  const s = new Session({ url: 'ws://x/ws/d', client, WebSocket: FakeWs, random: () => 0, timing: { base: 60000, max: 60000 } });
  s.start();
  clearInterval(s.watchdog);
  assert.equal(opened.length, 1);
  opened[0].onclose({ code: 1006 });
  assert.equal(s.status, 'reconnecting');
  assert.ok(s.nextRetryAt > Date.now() + 20000);
  assert.equal(s.retryNow(), true);
  assert.equal(opened.length, 2);
  assert.equal(s.retryNow(), false); // a connection is open already
  s.offline(); // the browser says offline: nothing to retry until it is back
  assert.equal(s.retryNow(), false);
  s.online();
  assert.equal(opened.length, 3);
  s.stop();
});

test('a long wait to reconnect ends as soon as the probe says the server is back', async () => {
  const { Session } = await import('../src/session.js');
  const opened = [];
  class FakeWs {
    constructor(url) { this.url = url; this.readyState = 0; opened.push(this); }
    close() {}
    send() {}
  }
  const client = { rev: null, on() {}, connected() {}, disconnected() {} };
  let serverUp = false;
  const probes = [];
  let answered = null;
  const probe = () => {
    probes.push(serverUp);
    const p = Promise.resolve(serverUp);
    p.then(() => { if (answered) answered(); });
    return p;
  };
  const nextAnswer = () => new Promise((r) => { answered = r; });
  const s = new Session({
    url: 'ws://x/ws/d', client, WebSocket: FakeWs, random: () => 0, probe, timing: { base: 600000, max: 600000, probe: 10 },
  });
  s.start();
  clearInterval(s.watchdog);
  opened[0].onopen();
  opened[0].onclose({ code: 1006 }); // the server went away without a word
  assert.equal(s.status, 'reconnecting');
  await nextAnswer(); // still down: keeps waiting
  assert.equal(opened.length, 1);
  await nextAnswer();
  serverUp = true;
  await nextAnswer();
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(opened.length, 2, 'connects at once when the probe answers');
  assert.equal(s.probeTimer, null);
  assert.deepEqual(probes.slice(-1), [true]);
  // A server that answered and refused (overloaded) is not probed: its backoff stands.
  const before = probes.length;
  opened[1].onopen();
  opened[1].onclose({ code: 1013 });
  assert.equal(s.probeTimer, null);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(probes.length, before);
  assert.equal(opened.length, 2);
  s.stop();
});
