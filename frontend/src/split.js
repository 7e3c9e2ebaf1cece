// Splitting an operation so that each `op` message fits the server's
// message size limit (a WebSocket frame above it is closed with 1009).
//
// Sizes are the UTF-8 bytes of the JSON text the browser sends, counted
// without building it: JSON.stringify writes non-ASCII characters as they
// are (1-4 bytes in UTF-8) and escapes `"`, `\`, control characters and lone
// surrogates. Pure module: no DOM, no I/O.

import { normalize } from './ot.js';

/** UTF-8 bytes of JSON.stringify(s) (with its quotes). */
export function jsonStringBytes(s) {
  return 2 + insertPrefix(s, Infinity).bytes;
}

/** UTF-8 bytes of JSON.stringify(value), for any JSON value. */
export function jsonBytes(value) {
  const s = JSON.stringify(value);
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) { n += 4; i++; }
    else n += 3;
  }
  return n;
}

/** The longest prefix of `s` whose JSON-escaped UTF-8 bytes (quotes not
 * counted) fit in `budget`: {units (UTF-16 length), cps (code points), bytes}.
 * Never splits a surrogate pair. */
function insertPrefix(s, budget) {
  let bytes = 0;
  let cps = 0;
  let i = 0;
  while (i < s.length) {
    const c = s.charCodeAt(i);
    let cost;
    let width = 1;
    if (c < 0x80) {
      if (c === 0x22 || c === 0x5c) cost = 2; // \" \\
      else if (c >= 0x20) cost = 1;
      else cost = (c === 8 || c === 9 || c === 10 || c === 12 || c === 13) ? 2 : 6; // \n ... or \u00XX
    } else if (c < 0x800) {
      cost = 2;
    } else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      cost = 4;
      width = 2;
    } else if (c >= 0xd800 && c <= 0xdfff) {
      cost = 6; // a lone surrogate is written as \uXXXX
    } else {
      cost = 3;
    }
    if (bytes + cost > budget) break;
    bytes += cost;
    cps += 1;
    i += width;
  }
  return { units: i, cps, bytes };
}

const numBytes = (n) => String(n).length;

/** Room kept in the head for its trailing retain (and a comma). */
const TAIL_RETAIN = 20;

/**
 * Split `op` (a valid operation) so that its JSON takes at most `budget`
 * bytes: returns {head, tail, bytes} where compose(head, tail) is `op`,
 * `head` is a valid operation on the same document, `tail` one on the
 * result of `head`, and `bytes` the JSON size of `head`. `tail` is null when
 * `op` fits whole (then `head` is `op`). The head always makes progress (at
 * least one component or one character), whatever the budget.
 *
 * Cost is proportional to the head only (plus the number of components),
 * so peeling a huge insert into many small messages stays linear.
 */
export function splitOp(op, budget) {
  const head = [];
  let used = 2; // []
  let consumed = 0; // base characters retained or deleted by the head
  let produced = 0; // characters of the head's result before the untouched rest
  let baseLen = 0;
  for (const c of op) if (typeof c === 'number') baseLen += Math.abs(c);
  let changed = false; // the head inserts or deletes something
  const room = () => budget - used - TAIL_RETAIN;

  for (let k = 0; k < op.length; k++) {
    const c = op[k];
    const comma = head.length ? 1 : 0;
    if (typeof c === 'number') {
      const cost = numBytes(c) + comma;
      if (cost > room() && changed) return cut(k, null);
      head.push(c);
      if (c < 0) changed = true;
      used += cost;
      consumed += Math.abs(c);
      if (c > 0) produced += c;
      continue;
    }
    // An insert: take as much as fits.
    const fit = insertPrefix(c, room() - comma - 2);
    if (fit.units === c.length) {
      head.push(c);
      changed = true;
      used += comma + 2 + fit.bytes;
      produced += fit.cps;
      continue;
    }
    let units = fit.units;
    let cps = fit.cps;
    if (units === 0) {
      if (changed) return cut(k, null);
      // Progress whatever the budget: one character.
      const one = insertPrefix(c, 6);
      units = one.units;
      cps = one.cps;
    }
    const part = c.slice(0, units);
    head.push(part);
    used += comma + jsonStringBytes(part);
    produced += cps;
    return cut(k + 1, c.slice(units));
  }
  return { head: op, tail: null, bytes: used };

  // The head is complete: close it with a retain over the untouched rest;
  // the tail retains the head's result and carries on from component `k`
  // (after `rest`, the remainder of a split insert).
  function cut(k, rest) {
    if (!rest && op.slice(k).every((x) => typeof x === 'number' && x > 0)) {
      // Only retains are left: the whole operation fits after all.
      return { head: op, tail: null, bytes: jsonBytes(op) };
    }
    const h = head.slice();
    if (baseLen - consumed > 0) {
      h.push(baseLen - consumed);
      used += 1 + numBytes(baseLen - consumed);
    }
    const t = [];
    if (produced > 0) t.push(produced);
    if (rest) t.push(rest);
    for (let j = k; j < op.length; j++) t.push(op[j]);
    return { head: normalize(h), tail: normalize(t), bytes: used };
  }
}
