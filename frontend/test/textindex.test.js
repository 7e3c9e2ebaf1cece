import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Text, ChangeSet } from '@codemirror/state';
import { changesToOp, opToChanges } from '../src/convert.js';
import { cpLength, cpToUtf16 } from '../src/ot.js';
import {
  cpBefore, utf16At, cpTotal, docChangesToOp, opToDocChanges, countWords, wordDelta,
} from '../src/textindex.js';
import { rng, randomText, randomOp } from './helpers.js';

const toDoc = (s) => Text.of(s.split('\n'));
const words = (s) => (s.match(/[^\s]+/g) || []).length;

/** A long text (many tree nodes) with emoji, spaces and line breaks. */
function bigText(r, n) {
  const parts = [];
  for (let i = 0; i < n; i++) parts.push(r.pick(['word', ' ', '\n', '😀', 'é', 'x', '🎉 ', '\t']));
  return parts.join('');
}

test('positions on the document tree match the string versions', () => {
  const r = rng(7);
  for (const n of [0, 1, 50, 5000]) {
    const s = bigText(r, n);
    const doc = toDoc(s);
    assert.equal(cpTotal(doc), cpLength(s));
    for (let k = 0; k < 200; k++) {
      const pos = r.int(s.length + 1);
      assert.equal(cpBefore(doc, pos), cpLength(s.slice(0, pos)), `cpBefore ${pos}`);
      const cp = r.int(cpLength(s) + 1);
      assert.equal(utf16At(doc, cp), cpToUtf16(s, cp), `utf16At ${cp}`);
    }
  }
});

test('transactions become the same operations as with the whole text', () => {
  const r = rng(11);
  for (let i = 0; i < 400; i++) {
    const s = i % 10 === 0 ? bigText(r, 3000) : randomText(r, 20);
    const doc = toDoc(s);
    const op = randomOp(r, s);
    const changes = opToChanges(s, op);
    assert.deepEqual(opToDocChanges(doc, op), changes);
    // Also changes that split a surrogate pair, as an editor might send.
    const from = r.int(s.length + 1);
    const to = Math.min(s.length, from + r.int(3));
    const raw = [{ from, to, insert: r.pick(['', 'x', '😀']) }];
    assert.deepEqual(docChangesToOp(doc, raw), changesToOp(s, raw));
    assert.deepEqual(docChangesToOp(doc, changes), changesToOp(s, changes));
  }
});

test('word counts follow a change set without recounting the document', () => {
  const r = rng(5);
  for (let i = 0; i < 500; i++) {
    const s = i % 10 === 0 ? bigText(r, 2000) : randomText(r, 20);
    const doc = toDoc(s);
    assert.equal(countWords(doc), words(s));
    const op = randomOp(r, s);
    const cs = ChangeSet.of(opToChanges(s, op), doc.length);
    const after = cs.apply(doc);
    assert.equal(countWords(doc) + wordDelta(doc, after, cs), words(after.toString()), JSON.stringify({ s, op }));
  }
});
