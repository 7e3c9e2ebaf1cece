// Operational transformation core, in the ot.js TextOperation JSON format.
//
// An operation is an array of components walking the whole document:
//   positive integer n  -> retain n characters
//   non-empty string s  -> insert s
//   negative integer -n -> delete n characters
//
// A "character" is one Unicode CODE POINT (what Python's str indexes), not a
// UTF-16 code unit: an emoji counts as 1 even though its JS .length is 2.
// Every function here matches collab/ot.py (and ot.js) exactly, including
// the transform tie-break: when both operations insert at the same position,
// the first argument's insert goes first.
//
// Pure module: no DOM, no I/O; used by the browser bundle and by Node tests.

/** Number of code points in a JS string. */
export function cpLength(s) {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    // Count each well-formed surrogate pair once.
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) { n--; i++; }
    }
  }
  return n;
}

/** UTF-16 offset of the code point index `cp` in `s` (clamped to the end). */
export function cpToUtf16(s, cp, startUnit = 0) {
  let i = startUnit;
  while (cp > 0 && i < s.length) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      i += d >= 0xdc00 && d <= 0xdfff ? 2 : 1;
    } else {
      i += 1;
    }
    cp--;
  }
  return i;
}

/** Code point index of the UTF-16 offset `unit` in `s`. A unit in the middle
 * of a surrogate pair counts as the end of that character. */
export function utf16ToCp(s, unit) {
  return cpLength(s.slice(0, unit));
}

/** Split off the first `n` code points of `s`: [head, tail]. */
function cpSplit(s, n) {
  const u = cpToUtf16(s, n);
  return [s.slice(0, u), s.slice(u)];
}

const isRetain = (c) => typeof c === 'number' && c > 0;
const isDelete = (c) => typeof c === 'number' && c < 0;
const isInsert = (c) => typeof c === 'string';

export class InvalidOperation extends Error {}

function hasLoneSurrogate(s) {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      if (!(d >= 0xdc00 && d <= 0xdfff)) return true;
      i++;
    } else if (c >= 0xdc00 && c <= 0xdfff) {
      return true;
    }
  }
  return false;
}

/** Throw InvalidOperation unless `op` is well formed (and spans `docLen`
 * characters when given). Returns `op`. */
export function validate(op, docLen = null) {
  if (!Array.isArray(op)) throw new InvalidOperation('an operation must be an array of components');
  let span = 0;
  op.forEach((c, i) => {
    if (typeof c === 'number') {
      if (!Number.isInteger(c)) throw new InvalidOperation(`component ${i}: floats are not allowed`);
      if (c === 0) throw new InvalidOperation(`component ${i}: 0 is not a valid component`);
      span += Math.abs(c);
    } else if (typeof c === 'string') {
      if (!c) throw new InvalidOperation(`component ${i}: the empty string is not a valid component`);
      if (hasLoneSurrogate(c)) throw new InvalidOperation(`component ${i}: insert contains a lone surrogate`);
    } else {
      throw new InvalidOperation(`component ${i}: ${JSON.stringify(c)} is not a valid component`);
    }
  });
  if (docLen !== null && span !== docLen) {
    throw new InvalidOperation(`operation spans ${span} characters but the document has ${docLen}`);
  }
  return op;
}

/** Accumulates components in normalized form (ot.js builder rules). */
class Builder {
  constructor() { this.ops = []; }
  retain(n) {
    if (n <= 0) return;
    const ops = this.ops;
    const last = ops[ops.length - 1];
    if (isRetain(last)) ops[ops.length - 1] = last + n;
    else ops.push(n);
  }
  insert(s) {
    if (!s) return;
    const ops = this.ops;
    const k = ops.length;
    if (k) {
      const last = ops[k - 1];
      if (isInsert(last)) { ops[k - 1] = last + s; return; }
      if (isDelete(last)) {
        // Keep inserts before deletes.
        if (k >= 2 && isInsert(ops[k - 2])) ops[k - 2] += s;
        else { ops[k - 1] = s; ops.push(last); }
        return;
      }
    }
    ops.push(s);
  }
  delete(n) {
    if (n <= 0) return;
    const ops = this.ops;
    const last = ops[ops.length - 1];
    if (isDelete(last)) ops[ops.length - 1] = last - n;
    else ops.push(-n);
  }
}

/** The canonical form of `op` as a new array. */
export function normalize(op) {
  const b = new Builder();
  for (const c of op) {
    if (isInsert(c)) b.insert(c);
    else if (c > 0) b.retain(c);
    else if (c < 0) b.delete(-c);
  }
  return b.ops;
}

/** Length of the document `op` applies to. */
export function baseLength(op) {
  let n = 0;
  for (const c of op) if (typeof c === 'number') n += Math.abs(c);
  return n;
}

/** Length of the document after `op`. */
export function targetLength(op) {
  let n = 0;
  for (const c of op) {
    if (isInsert(c)) n += cpLength(c);
    else if (c > 0) n += c;
  }
  return n;
}

/** True if `op` changes nothing. */
export function isNoop(op) {
  return op.every(isRetain);
}

/** The UTF-16 offset `cp` code points after `i` in `s`, or -1 when `s` ends first. */
function advance(s, cp, i) {
  while (cp > 0 && i < s.length) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      i += d >= 0xdc00 && d <= 0xdfff ? 2 : 1;
    } else {
      i += 1;
    }
    cp--;
  }
  return cp > 0 ? -1 : i;
}

/** Apply `op` to `text` (code point semantics), in one pass over the text. */
export function apply(text, op) {
  const parts = [];
  let unit = 0; // UTF-16 position in text
  for (const c of op) {
    if (isInsert(c)) {
      parts.push(c);
      continue;
    }
    const end = advance(text, Math.abs(c), unit);
    if (end < 0) { unit = -1; break; }
    if (c > 0) parts.push(text.slice(unit, end));
    unit = end;
  }
  if (unit !== text.length) {
    throw new InvalidOperation(`operation spans ${baseLength(op)} characters but the document has ${cpLength(text)}`);
  }
  return parts.join('');
}

/** Combine `a` then `b` into one operation. */
export function compose(a, b) {
  const ta = targetLength(a);
  const bb = baseLength(b);
  if (ta !== bb) {
    throw new InvalidOperation(`cannot compose: the first operation produces ${ta} characters but the second spans ${bb}`);
  }
  const out = new Builder();
  let ia = 0;
  let ib = 0;
  let x = a.length ? a[0] : undefined;
  let y = b.length ? b[0] : undefined;
  const nextA = () => { ia++; x = ia < a.length ? a[ia] : undefined; };
  const nextB = () => { ib++; y = ib < b.length ? b[ib] : undefined; };
  while (x !== undefined || y !== undefined) {
    if (isDelete(x)) { out.delete(-x); nextA(); continue; }
    if (isInsert(y)) { out.insert(y); nextB(); continue; }
    if (x === undefined || y === undefined) throw new InvalidOperation('cannot compose: operations have different lengths');
    if (isRetain(x)) {
      if (y > 0) {
        if (x > y) { out.retain(y); x -= y; nextB(); }
        else if (x === y) { out.retain(x); nextA(); nextB(); }
        else { out.retain(x); y -= x; nextA(); }
      } else {
        const d = -y;
        if (x > d) { out.delete(d); x -= d; nextB(); }
        else if (x === d) { out.delete(d); nextA(); nextB(); }
        else { out.delete(x); y += x; nextA(); }
      }
    } else {
      // a inserts
      const lx = cpLength(x);
      if (y > 0) {
        if (lx > y) { const [h, t] = cpSplit(x, y); out.insert(h); x = t; nextB(); }
        else if (lx === y) { out.insert(x); nextA(); nextB(); }
        else { out.insert(x); y -= lx; nextA(); }
      } else {
        const d = -y;
        if (lx > d) { x = cpSplit(x, d)[1]; nextB(); }
        else if (lx === d) { nextA(); nextB(); }
        else { y += lx; nextA(); }
      }
    }
  }
  return out.ops;
}

/** Transform concurrent `a` and `b` (same base): returns [a', b'] with
 * apply(apply(s, a), b') === apply(apply(s, b), a'). On an insert tie, a's
 * insert goes first. Input is taken in its normalized form (as the server's
 * ot.py does): where an insert stands next to a delete decides ties. */
export function transform(a, b) {
  a = normalize(a);
  b = normalize(b);
  const la = baseLength(a);
  const lb = baseLength(b);
  if (la !== lb) throw new InvalidOperation(`cannot transform: the operations span ${la} and ${lb} characters`);
  const pa = new Builder();
  const pb = new Builder();
  let ia = 0;
  let ib = 0;
  let x = a.length ? a[0] : undefined;
  let y = b.length ? b[0] : undefined;
  const nextA = () => { ia++; x = ia < a.length ? a[ia] : undefined; };
  const nextB = () => { ib++; y = ib < b.length ? b[ib] : undefined; };
  while (x !== undefined || y !== undefined) {
    if (isInsert(x)) { pa.insert(x); pb.retain(cpLength(x)); nextA(); continue; }
    if (isInsert(y)) { pa.retain(cpLength(y)); pb.insert(y); nextB(); continue; }
    if (x === undefined || y === undefined) throw new InvalidOperation('cannot transform: operations have different lengths');
    let m;
    if (x > 0 && y > 0) {
      if (x > y) { m = y; x -= y; nextB(); }
      else if (x === y) { m = x; nextA(); nextB(); }
      else { m = x; y -= x; nextA(); }
      pa.retain(m);
      pb.retain(m);
    } else if (x < 0 && y < 0) {
      if (x < y) { x -= y; nextB(); }
      else if (x === y) { nextA(); nextB(); }
      else { y -= x; nextA(); }
    } else if (x < 0) {
      const d = -x;
      if (d > y) { m = y; x += y; nextB(); }
      else if (d === y) { m = y; nextA(); nextB(); }
      else { m = d; y -= d; nextA(); }
      pa.delete(m);
    } else {
      const d = -y;
      if (x > d) { m = d; x -= d; nextB(); }
      else if (x === d) { m = d; nextA(); nextB(); }
      else { m = x; y += x; nextA(); }
      pb.delete(m);
    }
  }
  return [pa.ops, pb.ops];
}

/** The operation that undoes `op`; `text` is the document `op` applies to. */
export function invert(op, text) {
  const out = new Builder();
  let unit = 0;
  for (const c of op) {
    if (isInsert(c)) out.delete(cpLength(c));
    else if (c > 0) { out.retain(c); unit = cpToUtf16(text, c, unit); }
    else {
      const end = cpToUtf16(text, -c, unit);
      out.insert(text.slice(unit, end));
      unit = end;
    }
  }
  return out.ops;
}

/** Move a caret position through `op` (ot.js transformIndex): an insert
 * exactly at the index pushes it right; a delete pulls it left. */
export function transformIndex(index, op) {
  const bl = baseLength(op);
  if (index < 0) index = 0;
  else if (index > bl) index = bl;
  let n = index;
  for (const c of op) {
    if (isInsert(c)) n += cpLength(c);
    else if (c > 0) index -= c;
    else {
      const d = -c;
      n -= index < d ? index : d;
      index -= d;
    }
    if (index < 0) break;
  }
  return n;
}

/** Move a selection {anchor, head} through `op`. */
export function transformCursor(cursor, op) {
  if (!cursor) return cursor;
  return { anchor: transformIndex(cursor.anchor, op), head: transformIndex(cursor.head, op) };
}

/** The normalized operation that deletes `del` characters at `pos` and
 * inserts `ins`, in a document of `docLen` characters. */
export function fromSplice(docLen, pos, del, ins) {
  if (pos < 0 || del < 0 || pos + del > docLen) {
    throw new InvalidOperation(`splice at ${pos} deleting ${del} does not fit a document of ${docLen}`);
  }
  const b = new Builder();
  b.retain(pos);
  b.insert(ins);
  b.delete(del);
  b.retain(docLen - pos - del);
  return b.ops;
}
