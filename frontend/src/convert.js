// Conversions between the editor's world (UTF-16 offsets, lists of
// {from, to, insert} changes) and the protocol's (code point operations).
// Pure module, no DOM and no CodeMirror import, so Node can test it.

import { cpLength, cpToUtf16, normalize } from './ot.js';

const isHigh = (c) => c >= 0xd800 && c <= 0xdbff;
const isLow = (c) => c >= 0xdc00 && c <= 0xdfff;

/**
 * Changes `[{from, to, insert}]` (UTF-16 offsets into `text`, sorted, not
 * overlapping) -> an operation on `text` in code points. A change boundary
 * inside a surrogate pair is widened to the whole character, so the
 * operation never carries a lone surrogate.
 */
export function changesToOp(text, changes) {
  const op = [];
  let unit = 0;
  for (const ch of changes) {
    let { from, to } = ch;
    let insert = ch.insert || '';
    // Editors move by whole characters, so this is rare; if a change does
    // start or end inside a surrogate pair, widen it to the whole character
    // so the operation never carries a lone surrogate.
    if (from > unit && from < text.length && isLow(text.charCodeAt(from)) && isHigh(text.charCodeAt(from - 1))) {
      if (to === from) {
        insert = text.slice(from - 1, from + 1) + insert; // typed inside an emoji: put it after
        to = from + 1;
      }
      from -= 1;
    }
    if (to > from && to < text.length && isLow(text.charCodeAt(to)) && isHigh(text.charCodeAt(to - 1))) {
      to += 1;
    }
    if (from < unit) from = unit; // overlapping after widening: clip
    if (to < from) to = from;
    const keep = cpLength(text.slice(unit, from));
    if (keep) op.push(keep);
    if (insert) op.push(insert);
    const del = cpLength(text.slice(from, to));
    if (del) op.push(-del);
    unit = to;
  }
  const rest = cpLength(text.slice(unit));
  if (rest) op.push(rest);
  return normalize(op);
}

/** An operation on `text` (code points) -> changes in UTF-16 offsets. */
export function opToChanges(text, op) {
  const changes = [];
  let unit = 0;
  for (const c of op) {
    if (typeof c === 'string') {
      changes.push({ from: unit, to: unit, insert: c });
    } else if (c > 0) {
      unit = cpToUtf16(text, c, unit);
    } else {
      const end = cpToUtf16(text, -c, unit);
      changes.push({ from: unit, to: end, insert: '' });
      unit = end;
    }
  }
  // Merge an insert with the delete right after it into one replacement.
  const merged = [];
  for (const ch of changes) {
    const last = merged[merged.length - 1];
    if (last && last.to === ch.from && last.from === last.to && ch.insert === '') {
      last.to = ch.to;
    } else {
      merged.push({ ...ch });
    }
  }
  return merged;
}

/** A UTF-16 selection {anchor, head} in `text` -> code points. */
export function cursorToCp(text, anchor, head) {
  if (anchor === head) {
    const p = cpLength(text.slice(0, anchor));
    return { anchor: p, head: p };
  }
  return { anchor: cpLength(text.slice(0, anchor)), head: cpLength(text.slice(0, head)) };
}

/** A code point cursor -> UTF-16 offsets in `text` (clamped). */
export function cursorToUtf16(text, cursor) {
  return { anchor: cpToUtf16(text, Math.max(0, cursor.anchor)), head: cpToUtf16(text, Math.max(0, cursor.head)) };
}
