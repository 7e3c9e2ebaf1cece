// Code point positions and counts on CodeMirror's document tree, at a cost
// that follows the edit, not the document.
//
// CodeMirror keeps its text as a balanced tree of immutable nodes and shares
// every untouched node between a document and the next. The number of
// surrogate pairs (characters outside the BMP, such as emoji) in each node is
// cached per node object, so converting a position between UTF-16 (the
// editor's unit) and code points (the protocol's) walks one root-to-leaf path
// and only the nodes an edit created are ever counted. Word counts are kept
// up to date from a change set by recounting the changed ranges alone. No DOM
// here: the Node tests run it on `Text` from @codemirror/state.

import { cpLength, cpToUtf16, normalize } from './ot.js';

const pairsCache = new WeakMap();

/** Surrogate pairs in a string (each is one code point in two UTF-16 units). */
function countPairs(s) {
  let n = 0;
  for (let i = 0; i + 1 < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) { n++; i++; }
    }
  }
  return n;
}

/** Surrogate pairs in a `Text` node (cached: nodes are immutable). Pairs never
 * span a line break, so a node's count is the sum of its children's. */
function pairsIn(node) {
  let n = pairsCache.get(node);
  if (n !== undefined) return n;
  if (node.children) {
    n = 0;
    for (const c of node.children) n += pairsIn(c);
  } else {
    n = countPairs(node.sliceString(0));
  }
  pairsCache.set(node, n);
  return n;
}

/** The document's length in code points. */
export function cpTotal(doc) {
  return doc.length - pairsIn(doc);
}

/** Code points before the UTF-16 offset `pos` of `doc` (a lone half of a
 * pair, when `pos` splits one, counts as one). */
export function cpBefore(doc, pos) {
  pos = Math.max(0, Math.min(pos, doc.length));
  let cps = 0;
  let node = doc;
  while (node.children) {
    let next = null;
    for (const child of node.children) {
      if (pos <= child.length) { next = child; break; }
      cps += child.length - pairsIn(child) + 1; // + the line break after it
      pos -= child.length + 1;
    }
    if (!next) return cps; // unreachable for a clamped position
    node = next;
  }
  return cps + cpLength(node.sliceString(0, pos));
}

/** The UTF-16 offset of code point position `cp` in `doc` (clamped to the end). */
export function utf16At(doc, cp) {
  if (cp <= 0) return 0;
  let off = 0;
  let node = doc;
  while (node.children) {
    let next = null;
    for (const child of node.children) {
      const n = child.length - pairsIn(child);
      if (cp <= n) { next = child; break; }
      cp -= n + 1;
      off += child.length + 1;
    }
    if (!next) return doc.length;
    node = next;
  }
  return off + cpToUtf16(node.sliceString(0), cp);
}

const isHigh = (c) => c >= 0xd800 && c <= 0xdbff;
const isLow = (c) => c >= 0xdc00 && c <= 0xdfff;

/** The pair-safe changes of one transaction, `[{from, to, insert}]` in UTF-16
 * offsets of `doc` (sorted, not overlapping) -> an operation on `doc` in code
 * points. Same rules as convert.changesToOp (a boundary inside a surrogate
 * pair widens to the whole character), without reading the whole text. */
export function docChangesToOp(doc, changes) {
  const op = [];
  const len = doc.length;
  const at = (i) => (i >= 0 && i < len ? doc.sliceString(i, i + 1).charCodeAt(0) : 0);
  let unit = 0;
  let unitCp = 0;
  for (const ch of changes) {
    let { from, to } = ch;
    let insert = ch.insert || '';
    if (from > unit && from < len && isLow(at(from)) && isHigh(at(from - 1))) {
      if (to === from) {
        insert = doc.sliceString(from - 1, from + 1) + insert; // typed inside an emoji: put it after
        to = from + 1;
      }
      from -= 1;
    }
    if (to > from && to < len && isLow(at(to)) && isHigh(at(to - 1))) to += 1;
    if (from < unit) from = unit;
    if (to < from) to = from;
    const fromCp = cpBefore(doc, from);
    const toCp = cpBefore(doc, to);
    if (fromCp > unitCp) op.push(fromCp - unitCp);
    if (insert) op.push(insert);
    if (toCp > fromCp) op.push(fromCp - toCp);
    unit = to;
    unitCp = toCp;
  }
  const rest = cpTotal(doc) - unitCp;
  if (rest) op.push(rest);
  return normalize(op);
}

/** An operation (code points) on `doc` -> CodeMirror changes in UTF-16 offsets,
 * an insert followed by a delete merged into one replacement. */
export function opToDocChanges(doc, op) {
  const changes = [];
  let cp = 0;
  let unit = 0;
  for (const c of op) {
    if (typeof c === 'string') {
      changes.push({ from: unit, to: unit, insert: c });
    } else if (c > 0) {
      cp += c;
      unit = utf16At(doc, cp);
    } else {
      cp -= c;
      const end = utf16At(doc, cp);
      const last = changes[changes.length - 1];
      if (last && last.from === unit && last.to === unit) last.to = end;
      else changes.push({ from: unit, to: end, insert: '' });
      unit = end;
    }
  }
  return changes;
}

// ---- words -------------------------------------------------------------------

// The characters JavaScript's \s matches (all in the BMP).
const SPACE = /\s/;
const isSpaceCode = (c) => c === 32 || c === 10 || (c > 8 && c < 14) || (c > 127 && SPACE.test(String.fromCharCode(c)));

/** Words (runs of non-space characters) starting in [from, to) of `doc`. */
function wordStarts(doc, from, to) {
  to = Math.min(to, doc.length);
  if (to <= from) return 0;
  const start = Math.max(0, from - 1);
  const s = doc.sliceString(start, to);
  let n = 0;
  let prevSpace = from === 0 ? true : isSpaceCode(s.charCodeAt(0));
  for (let i = from - start; i < s.length; i++) {
    const space = isSpaceCode(s.charCodeAt(i));
    if (!space && prevSpace) n++;
    prevSpace = space;
  }
  return n;
}

/** The number of words in `doc` (runs of non-space characters, as /[^\s]+/g counts them). */
export function countWords(doc) {
  return wordStarts(doc, 0, doc.length);
}

/** How many words a change set added (negative: removed), reading only the
 * changed ranges and the character after each: a word starts at a position
 * only depending on that character and the one before it. */
export function wordDelta(startDoc, doc, changes) {
  const windows = [];
  changes.iterChangedRanges((fromA, toA, fromB, toB) => {
    const last = windows[windows.length - 1];
    if (last && fromA <= last.toA) {
      last.toA = toA + 1;
      last.toB = toB + 1;
    } else {
      windows.push({ fromA, toA: toA + 1, fromB, toB: toB + 1 });
    }
  });
  let delta = 0;
  for (const w of windows) delta += wordStarts(doc, w.fromB, w.toB) - wordStarts(startDoc, w.fromA, w.toA);
  return delta;
}
