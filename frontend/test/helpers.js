// Shared helpers for the Node tests: a seeded PRNG and random texts/ops.
import { fromSplice, cpLength, compose } from '../src/ot.js';

export function rng(seed) {
  let s = seed >>> 0 || 1;
  const f = () => {
    // xorshift32
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s / 4294967296;
  };
  f.int = (n) => Math.floor(f() * n);
  f.pick = (arr) => arr[f.int(arr.length)];
  return f;
}

const ALPHABET = ['a', 'b', 'c', ' ', '\n', 'é', '😀', '🎉', '中'];

export function randomText(r, max) {
  let s = '';
  const n = r.int(max + 1);
  for (let i = 0; i < n; i++) s += r.pick(ALPHABET);
  return s;
}

/** A random operation on `s`: one or two splices, composed. */
export function randomOp(r, s) {
  const len = cpLength(s);
  const pos = r.int(len + 1);
  const del = r.int(Math.min(3, len - pos) + 1);
  const ins = r() < 0.7 ? randomText(r, 3) : '';
  let op = fromSplice(len, pos, del, ins);
  if (r() < 0.3) {
    const len2 = len - del + cpLength(ins);
    const p2 = r.int(len2 + 1);
    op = compose(op, fromSplice(len2, p2, r.int(Math.min(2, len2 - p2) + 1), randomText(r, 2)));
  }
  return op;
}
