// History's pure parts: what changed between a past revision and now, the
// labels of editing sessions, and stable colour slots for authors. No DOM:
// the Node tests run it; histpanel.js and authors.js draw with it.

import { diffOp } from './diff.js';
import { cpToUtf16 } from './ot.js';

/** What changed in `now` since `old`, as places in `old` (UTF-16 offsets):
 * `deleted` ranges of `old` that are gone now, and `inserted` points where
 * text was added since (`count` code points). Computed with the project's
 * diff (diff.js), so positions are whole code points (an emoji is never split). */
export function changesSince(old, now) {
  const op = diffOp(old, now);
  const deleted = [];
  const inserted = [];
  let unit = 0; // UTF-16 offset in `old`
  for (const c of op) {
    if (typeof c === 'string') {
      inserted.push({ at: unit, count: Array.from(c).length, text: c });
    } else if (c > 0) {
      unit = cpToUtf16(old, c, unit);
    } else {
      const end = cpToUtf16(old, -c, unit);
      deleted.push({ from: unit, to: end });
      unit = end;
    }
  }
  return { deleted, inserted };
}

/** An author's name for people: the empty name (text older than history) says so. */
export function authorLabel(name) {
  return name ? name : 'before history';
}

/** One editing session in a line of text: its authors, size and revisions. */
export function sessionSummary(s) {
  const authors = (s.authors || []).map(authorLabel).join(', ') || 'nobody';
  const revs = s.from === s.to ? `rev ${s.to}` : `revs ${s.from}–${s.to}`;
  return { authors, counts: `+${s.inserted} −${s.deleted}`, revs };
}

/** A session's time, "5 Dec 2026, 09:14" in the page's locale (`end` in Unix seconds). */
export function sessionTime(s, locale = undefined) {
  const d = new Date(s.end * 1000);
  return d.toLocaleString(locale, { day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit' });
}

/** How many author colours style.css defines (`.cm-author-0` … `-N`). */
export const AUTHOR_COLORS = 10;

/** Colour slots for authors, given in order of first sight and kept for the
 * page's life, so a colour never moves from one person to another as the
 * text changes. The empty name (before history) has no colour (`null`). */
export class AuthorSlots {
  constructor(size = AUTHOR_COLORS) {
    this.size = size;
    this.slots = new Map();
  }

  slot(name) {
    if (!name) return null;
    let n = this.slots.get(name);
    if (n === undefined) {
      n = this.slots.size % this.size;
      this.slots.set(name, n);
    }
    return n;
  }
}

/** Authorship spans (`[{start, end, author}]` in code points of `text`) as
 * UTF-16 ranges of `text`, adjacent spans of one author merged. */
export function spansToRanges(spans, text) {
  const out = [];
  let cp = 0;
  let unit = 0;
  for (const s of spans) {
    if (!(s.end > s.start) || s.start < cp) continue;
    const from = cpToUtf16(text, s.start - cp, unit);
    const to = cpToUtf16(text, s.end - s.start, from);
    cp = s.end;
    unit = to;
    const last = out[out.length - 1];
    if (last && last.author === s.author && last.to === from) last.to = to;
    else out.push({ from, to, author: s.author });
  }
  return out;
}
