// A document's default title: its first Markdown heading, as the server finds
// it (src/collab/titles.py): an ATX heading (`# Title`) outside code fences,
// within the first HEAD_CHARS characters, so a large document costs no more.

export const HEAD_CHARS = 4096;
export const MAX_TITLE = 200;

const ATX = /^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/;
const FENCE = /^ {0,3}(```|~~~)/;

/** The first heading's text in `head`, one line, trimmed; null when there is none. */
export function firstHeading(head) {
  let fenced = false;
  for (const line of head.slice(0, HEAD_CHARS).split(/\r\n|\r|\n/)) {
    if (FENCE.test(line)) {
      fenced = !fenced;
      continue;
    }
    if (fenced) continue;
    const m = ATX.exec(line);
    if (m && m[1].trim()) return m[1].replace(/\p{C}/gu, ' ').split(/\s+/).filter(Boolean).join(' ').slice(0, MAX_TITLE);
  }
  return null;
}
