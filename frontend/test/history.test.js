import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  changesSince, sessionSummary, AuthorSlots, spansToRanges, authorLabel,
} from '../src/history.js';

test('changes since a revision are places in its text, never inside an emoji', () => {
  const old = 'Hi 😀 there 🦊!';
  const now = 'Hi 😀 here 🦊🐝!';
  const { deleted, inserted } = changesSince(old, now);
  // "t" of "there" is gone; "🐝" was added after the fox.
  assert.deepEqual(deleted.map((d) => old.slice(d.from, d.to)), ['t']);
  assert.equal(inserted.length, 1);
  assert.equal(inserted[0].text, '🐝');
  assert.equal(inserted[0].count, 1);
  assert.equal(old.slice(0, inserted[0].at), 'Hi 😀 there 🦊');
  assert.deepEqual(changesSince('same 🎉', 'same 🎉'), { deleted: [], inserted: [] });
  const gone = changesSince('🎉🎉', '');
  assert.deepEqual(gone.deleted, [{ from: 0, to: 4 }]);
});

test('a session reads as authors, counts and revisions', () => {
  const s = { from: 3, to: 9, start: 0, end: 60, authors: ['ana', 'bo 🦊', ''], inserted: 12, deleted: 2 };
  assert.deepEqual(sessionSummary(s), { authors: 'ana, bo 🦊, before history', counts: '+12 −2', revs: 'revs 3–9' });
  assert.equal(sessionSummary({ ...s, from: 9 }).revs, 'rev 9');
  assert.equal(authorLabel(''), 'before history');
});

test('author colour slots are stable and the empty author has none', () => {
  const slots = new AuthorSlots(3);
  assert.equal(slots.slot('ana'), 0);
  assert.equal(slots.slot('bo 🦊'), 1);
  assert.equal(slots.slot('ana'), 0);
  assert.equal(slots.slot(''), null);
  assert.equal(slots.slot('c'), 2);
  assert.equal(slots.slot('d'), 0); // wraps around past the palette
});

test('authorship spans in code points become UTF-16 ranges, one per run of an author', () => {
  const text = '😀a🦊bc';
  const spans = [
    { start: 0, end: 1, author: 'ana' }, { start: 1, end: 2, author: 'ana' },
    { start: 2, end: 3, author: 'bo' }, { start: 3, end: 5, author: '' },
  ];
  const r = spansToRanges(spans, text);
  assert.deepEqual(r.map((x) => [text.slice(x.from, x.to), x.author]), [['😀a', 'ana'], ['🦊', 'bo'], ['bc', '']]);
  assert.deepEqual(spansToRanges([], ''), []);
});
