import { test } from 'node:test';
import assert from 'node:assert/strict';
import { changesToOp, opToChanges, cursorToCp, cursorToUtf16 } from '../src/convert.js';
import { apply, validate, cpLength } from '../src/ot.js';
import { rng, randomText, randomOp } from './helpers.js';

function applyChanges(text, changes) {
  let out = '';
  let pos = 0;
  for (const c of changes) {
    out += text.slice(pos, c.from) + c.insert;
    pos = c.to;
  }
  return out + text.slice(pos);
}

test('editor changes with emoji become code point operations', () => {
  const text = 'a😀b';
  assert.deepEqual(changesToOp(text, [{ from: 3, to: 3, insert: '🎉' }]), [2, '🎉', 1]);
  assert.deepEqual(changesToOp(text, [{ from: 1, to: 3, insert: '' }]), [1, -1, 1]);
  assert.deepEqual(changesToOp('', [{ from: 0, to: 0, insert: '👩‍💻' }]), ['👩‍💻']);
});

test('a change splitting a surrogate pair is widened to the whole emoji', () => {
  const text = 'a😀b';
  const op = changesToOp(text, [{ from: 2, to: 2, insert: 'x' }]);
  validate(op, 3);
  assert.equal(apply(text, op), 'a😀xb');
  const op2 = changesToOp(text, [{ from: 1, to: 2, insert: '' }]);
  validate(op2, 3);
  assert.equal(apply(text, op2), 'ab');
});

test('operations become editor changes and back', () => {
  const r = rng(3);
  for (let i = 0; i < 500; i++) {
    const text = randomText(r, 15);
    const op = randomOp(r, text);
    const changes = opToChanges(text, op);
    assert.equal(applyChanges(text, changes), apply(text, op));
    assert.equal(apply(text, changesToOp(text, changes)), apply(text, op));
  }
});

test('cursors convert between UTF-16 and code points', () => {
  const text = '😀😀ab';
  assert.deepEqual(cursorToCp(text, 4, 2), { anchor: 2, head: 1 });
  assert.deepEqual(cursorToUtf16(text, { anchor: 2, head: 1 }), { anchor: 4, head: 2 });
  assert.deepEqual(cursorToUtf16(text, { anchor: 99, head: 0 }), { anchor: text.length, head: 0 });
  assert.equal(cpLength(text), 4);
});
