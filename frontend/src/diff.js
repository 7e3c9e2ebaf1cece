// Turn two versions of a text into an OT operation (code point semantics).
//
// Used to rebase local edits after a long absence, when the server answers a
// resume with a snapshot instead of the missed operations: diffing the last
// known server text against the snapshot yields an operation that retains
// everything unchanged, so local edits in untouched regions survive the
// transform intact. Pure module (no DOM).

import DiffMatchPatch from 'diff-match-patch';
import { normalize } from './ot.js';

const dmp = new DiffMatchPatch();
dmp.Diff_Timeout = 1.0;

/** Operation turning `a` into `b`, built from a character diff. */
export function diffOp(a, b) {
  const ca = Array.from(a);
  const cb = Array.from(b);
  // Common prefix and suffix first (cheap, and the usual case).
  let p = 0;
  while (p < ca.length && p < cb.length && ca[p] === cb[p]) p++;
  let s = 0;
  while (s < ca.length - p && s < cb.length - p && ca[ca.length - 1 - s] === cb[cb.length - 1 - s]) s++;
  const ma = ca.slice(p, ca.length - s);
  const mb = cb.slice(p, cb.length - s);
  const out = [];
  if (p) out.push(p);
  if (ma.length && mb.length) {
    middleDiff(ma, mb, out);
  } else {
    if (mb.length) out.push(mb.join(''));
    if (ma.length) out.push(-ma.length);
  }
  if (s) out.push(s);
  return normalize(out);
}

// diff-match-patch works on UTF-16 code units and may split surrogate pairs;
// map every distinct code point to one code unit (as its linesToChars trick
// does for lines), diff, and map back, so the diff is per code point.
function middleDiff(ma, mb, out) {
  const table = new Map();
  const chars = [];
  const encode = (arr) => {
    let s = '';
    for (const ch of arr) {
      let k = table.get(ch);
      if (k === undefined) {
        k = chars.length;
        table.set(ch, k);
        chars.push(ch);
      }
      s += String.fromCharCode(k);
    }
    return s;
  };
  if (new Set(ma.concat(mb)).size > 65535) {
    // Absurdly diverse text: fall back to replacing the middle.
    out.push(mb.join(''), -ma.length);
    return;
  }
  const ea = encode(ma);
  const eb = encode(mb);
  const diffs = dmp.diff_main(ea, eb, false);
  dmp.diff_cleanupEfficiency(diffs);
  for (const [kind, str] of diffs) {
    if (kind === 0) out.push(str.length);
    else if (kind === -1) out.push(-str.length);
    else {
      let t = '';
      for (let i = 0; i < str.length; i++) t += chars[str.charCodeAt(i)];
      out.push(t);
    }
  }
}
