import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apply, compose, transform, normalize, invert, transformIndex, cpLength,
  cpToUtf16, utf16ToCp, baseLength, targetLength, validate, fromSplice, isNoop,
} from '../src/ot.js';
import { diffOp } from '../src/diff.js';
import { randomOp, randomText, rng } from './helpers.js';

test('code point lengths count an emoji once', () => {
  assert.equal(cpLength('a😀b'), 3);
  assert.equal('a😀b'.length, 4);
  assert.equal(cpToUtf16('a😀b', 2), 3);
  assert.equal(utf16ToCp('a😀b', 3), 2);
  assert.equal(cpLength('👩‍👩‍👧'), 5); // a ZWJ family is five code points
});

test('apply with emoji', () => {
  assert.equal(apply('a😀b', [1, -1, 'é', 1]), 'aéb');
  assert.equal(apply('😀😀', [1, '🎉', 1]), '😀🎉😀');
  assert.equal(apply('', ['🙂']), '🙂');
  assert.throws(() => apply('a😀b', [4]));
});

test('normalize merges and puts inserts before deletes', () => {
  assert.deepEqual(normalize([1, 2, 'a', 'b', -1, -2]), [3, 'ab', -3]);
  assert.deepEqual(normalize([-1, 'x']), ['x', -1]);
  assert.deepEqual(normalize(['x', -1, 'y', 2]), ['xy', -1, 2]);
});

test('validate rejects bad components', () => {
  assert.throws(() => validate([0]));
  assert.throws(() => validate(['']));
  assert.throws(() => validate([1.5]));
  assert.throws(() => validate([true]));
  assert.throws(() => validate([[1]]));
  assert.throws(() => validate(['\ud800']));
  assert.throws(() => validate([3], 4));
  assert.deepEqual(validate([1, '😀', -2], 3), [1, '😀', -2]);
});

test('transform tie-break: the first argument inserts first', () => {
  const [a2, b2] = transform([1, 'A', 1], [1, 'B', 1]);
  assert.equal(apply(apply('xy', [1, 'A', 1]), b2), 'xABy');
  assert.equal(apply(apply('xy', [1, 'B', 1]), a2), 'xABy');
});

test('transform and compose with emoji at the same spot', () => {
  const s = '😀😀';
  const a = [1, '🐱', 1];
  const b = [1, '🐶', -1];
  const [a2, b2] = transform(a, b);
  assert.equal(apply(apply(s, a), b2), '😀🐱🐶');
  assert.equal(apply(apply(s, b), a2), '😀🐱🐶');
  assert.equal(apply(s, compose(a, [2, -1, '!'])), '😀🐱!');
});

test('compose splits inserts by code points', () => {
  const a = ['😀😀😀'];
  const b = [1, -1, 1];
  assert.deepEqual(compose(a, b), ['😀😀']);
  assert.deepEqual(compose(['ab😀cd'], [3, 'X', 2]), ['ab😀Xcd']);
});

test('random transform/compose properties (with emoji)', () => {
  const r = rng(42);
  for (let i = 0; i < 500; i++) {
    const s = randomText(r, 12);
    const a = randomOp(r, s);
    const b = randomOp(r, s);
    const [a2, b2] = transform(a, b);
    assert.equal(apply(apply(s, a), b2), apply(apply(s, b), a2));
    const sa = apply(s, a);
    const c = randomOp(r, sa);
    assert.equal(apply(s, compose(a, c)), apply(sa, c));
    assert.equal(apply(sa, invert(a, s)), s);
    assert.equal(baseLength(a), cpLength(s));
    assert.equal(targetLength(a), cpLength(sa));
  }
});

test('transformIndex pushes on insert, pulls on delete, clamps', () => {
  assert.equal(transformIndex(2, [2, 'ab', 1]), 4);
  assert.equal(transformIndex(2, [1, -2]), 1);
  assert.equal(transformIndex(0, ['😀', 3]), 1);
  assert.equal(transformIndex(99, [3]), 3);
  assert.equal(transformIndex(-5, [3]), 0);
});

test('fromSplice and isNoop', () => {
  assert.deepEqual(fromSplice(5, 1, 2, 'xy'), [1, 'xy', -2, 2]);
  assert.ok(isNoop([5]));
  assert.ok(isNoop([]));
  assert.ok(!isNoop(['a']));
});

test('diffOp turns one text into another per code point', () => {
  const r = rng(7);
  const cases = [['', ''], ['', 'a😀'], ['a😀b', ''], ['😀', '😁'], ['x😀y', 'x😁y'],
    ['hello world', 'hello brave new world'], ['\ud83d\ude00\ud83d\ude01', '\ud83d\ude01\ud83d\ude00']];
  for (let i = 0; i < 300; i++) cases.push([randomText(r, 20), randomText(r, 20)]);
  for (const [a, b] of cases) {
    const op = diffOp(a, b);
    validate(op, cpLength(a));
    assert.equal(apply(a, op), b);
  }
  // Unchanged regions are retained, so edits elsewhere survive a transform.
  assert.deepEqual(diffOp('one two three', 'ONE two threE'), ['ONE', -3, 9, 'E', -1]);
});

test('transform takes non-normalized input as its normalized form (insert after delete) 👋', () => {
  // [-2, '👋', -1] is ['👋', -3] once normalized: the 👋 stands at 0 and ties with b's insert there.
  const a = [-2, '👋', -1];
  const b = ['👋', 3];
  const raw = transform(a, b);
  assert.deepEqual(raw, transform(normalize(a), normalize(b)));
  assert.deepEqual(raw, [['👋', 1, -3], [1, '👋']]);
  const s = 'abc';
  assert.equal(apply(apply(s, a), raw[1]), apply(apply(s, b), raw[0]));
});
