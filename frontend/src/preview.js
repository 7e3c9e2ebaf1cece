// The rendered view beside (split) or instead of (view) the editor: live,
// debounced, bounded for large documents, scroll-synced with the editor in
// split mode; and the standalone HTML export of the same rendering.
//
// Rendering reads the whole text, so it runs only while the preview is
// shown, at most once per pause in typing (anyone's), and for a document
// over BIG_DOC characters it renders an excerpt of EXCERPT_LINES lines
// around the editor's position instead of everything.

import { renderFragment, renderMarkdown } from './render.js';

/** Above this many characters the preview renders an excerpt. */
export const BIG_DOC = 200_000;
/** Lines in an excerpt of a large document. */
export const EXCERPT_LINES = 400;
const DELAY = 120;
const BIG_DELAY = 400;

/** Which lines of `doc` (1-based, inclusive) to render, given the editor's
 * top line: everything for a small document, else an excerpt starting at a
 * blank line shortly before `topLine` when there is one. */
export function excerptRange(doc, topLine) {
  if (doc.length <= BIG_DOC) return { from: 1, to: doc.lines, whole: true };
  let from = Math.max(1, topLine - 40);
  for (let n = from, stop = Math.max(1, from - 100); n >= stop; n--) {
    if (!doc.line(n).text.trim()) { from = n; break; }
  }
  const to = Math.min(doc.lines, from + EXCERPT_LINES - 1);
  // Near the end, a full excerpt ending at the last line.
  return { from: Math.max(1, Math.min(from, to - EXCERPT_LINES + 1)), to, whole: false };
}

export class Preview {
  /** @param {object} o  {view: EditorView, scroller: Element, body: Element, note: Element} */
  constructor({ view, scroller, body, note }) {
    this.view = view;
    this.scroller = scroller;
    this.body = body;
    this.note = note;
    this.active = false;
    this.split = false;
    this.timer = null;
    this.renders = 0; // for tests: how many times the preview was rendered
    this.range = null;
    this.anchor = null; // the excerpt's line in view mode, once moved with Earlier / Later
    this.expectScroll = { editor: null, preview: null };
    // Which side the user last touched leads the scroll sync; the other side
    // follows. Scrolls the page causes itself (re-rendering, following the
    // other side, typing) never lead, so the two sides cannot chase each other.
    this.driver = 'editor';
    for (const ev of ['wheel', 'touchstart', 'pointerdown', 'keydown']) {
      scroller.addEventListener(ev, () => { this.driver = 'preview'; }, { passive: true });
      view.scrollDOM.addEventListener(ev, () => { this.driver = 'editor'; }, { passive: true });
    }
    view.scrollDOM.addEventListener('scroll', () => this._editorScrolled(), { passive: true });
    scroller.addEventListener('scroll', () => this._previewScrolled(), { passive: true });
  }

  /** Show (`active`) or hide the preview; `split`: beside the editor. */
  setMode(active, split) {
    const was = this.active;
    this.active = active;
    this.split = split;
    if (active && !was) this.render();
    else if (active) this.syncFromEditor();
    if (!active) clearTimeout(this.timer);
  }

  /** The document changed: render again after a pause. */
  changed() {
    if (!this.active) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.render(), this.view.state.doc.length > BIG_DOC ? BIG_DELAY : DELAY);
  }

  _topLine() {
    if (!this.split && this.anchor) return this.anchor;
    const v = this.view;
    const h = v.scrollDOM.getBoundingClientRect().top - v.documentTop;
    return v.state.doc.lineAt(v.lineBlockAtHeight(Math.max(0, h)).from).number;
  }

  render() {
    clearTimeout(this.timer);
    const doc = this.view.state.doc;
    const r = excerptRange(doc, this._topLine());
    const src = r.whole ? doc.toString() : doc.sliceString(doc.line(r.from).from, doc.line(r.to).to);
    const scroll = this.scroller.scrollTop;
    this.body.replaceChildren(renderFragment(src, r.from - 1));
    this.range = r;
    this.renders++;
    this.body.dataset.renders = String(this.renders);
    if (r.whole) {
      this.note.hidden = true;
    } else {
      this.note.hidden = false;
      this.note.replaceChildren(
        `This document is large: the preview shows lines ${r.from.toLocaleString()}–${r.to.toLocaleString()} `
        + `of ${doc.lines.toLocaleString()}, around your place in the editor. `,
        this._button('Earlier', 'preview-earlier', r.from > 1, () => this._move(-1)),
        ' ',
        this._button('Later', 'preview-later', r.to < doc.lines, () => this._move(1)),
      );
    }
    if (this.split) this.syncFromEditor();
    else this.scroller.scrollTop = scroll;
  }

  _button(text, id, enabled, run) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'link-btn';
    b.id = id;
    b.textContent = text;
    b.disabled = !enabled;
    b.addEventListener('click', run);
    return b;
  }

  /** Show the excerpt before (-1) or after (+1) this one; in split mode the editor goes there too. */
  _move(dir) {
    const doc = this.view.state.doc;
    const r = this.range;
    // excerptRange starts about 40 lines above the line it is given.
    const line = Math.max(1, Math.min(doc.lines, dir < 0 ? r.from - EXCERPT_LINES + 40 : r.to + 41));
    this.anchor = line;
    if (this.split) {
      this.driver = 'editor';
      this.view.dispatch({ effects: this.view.constructor.scrollIntoView(doc.line(line).from, { y: 'start' }) });
    }
    this.render();
    if (!this.split) this.scroller.scrollTop = 0;
  }

  /** Blocks with their source line, in document order. */
  _blocks() {
    return Array.from(this.body.querySelectorAll('[data-line]'), (el) => ({ el, line: Number(el.dataset.line) }));
  }

  /** Scroll the preview so the block of the editor's top line is at its top. */
  syncFromEditor() {
    if (!this.active || !this.split) return;
    const v = this.view;
    if (v.scrollDOM.scrollTop <= 0 && (!this.range || this.range.from === 1)) {
      if (this.scroller.scrollTop > 0) {
        this.expectScroll.preview = 0;
        this.scroller.scrollTop = 0;
      }
      return;
    }
    const h = Math.max(0, v.scrollDOM.getBoundingClientRect().top - v.documentTop);
    const block = v.lineBlockAtHeight(h);
    const line = v.state.doc.lineAt(block.from).number - 1; // 0-based, as data-line
    const frac = block.height ? Math.min(1, (h - block.top) / block.height) : 0;
    const blocks = this._blocks();
    if (!blocks.length) return;
    let i = 0;
    while (i + 1 < blocks.length && blocks[i + 1].line <= line) i++;
    const base = this.scroller.getBoundingClientRect().top - this.scroller.scrollTop;
    const top = (el) => el.getBoundingClientRect().top - base;
    const a = blocks[i];
    const b = blocks[i + 1];
    let target = top(a.el);
    if (line >= a.line) {
      const span = b ? b.line - a.line : 1;
      const next = b ? top(b.el) : top(a.el) + a.el.offsetHeight;
      target += ((line - a.line + frac) / Math.max(1, span)) * (next - top(a.el));
    }
    target = Math.round(Math.max(0, target - 8));
    if (Math.abs(this.scroller.scrollTop - target) < 1) return;
    this.expectScroll.preview = target;
    this.scroller.scrollTop = target;
  }

  /** Scroll the editor to the source line of the preview's top block. */
  syncFromPreview() {
    if (!this.active || !this.split) return;
    const blocks = this._blocks();
    if (!blocks.length) return;
    const edge = this.scroller.getBoundingClientRect().top + 8;
    let pick = blocks[0];
    for (const b of blocks) {
      if (b.el.getBoundingClientRect().top > edge) break;
      pick = b;
    }
    const v = this.view;
    const n = Math.min(v.state.doc.lines, pick.line + 1);
    const docTopInScroller = v.documentTop - v.scrollDOM.getBoundingClientRect().top + v.scrollDOM.scrollTop;
    const target = Math.round(v.lineBlockAt(v.state.doc.line(n).from).top + docTopInScroller);
    if (Math.abs(v.scrollDOM.scrollTop - target) < 1) return;
    this.expectScroll.editor = target;
    v.scrollDOM.scrollTop = target;
  }

  _editorScrolled() {
    if (!this.active) return;
    if (this.range && !this.range.whole) {
      const top = this._topLine();
      if (top < this.range.from || top > this.range.to - 40) this.changed(); // render the excerpt around it
    }
    const want = this.expectScroll.editor;
    this.expectScroll.editor = null;
    if (want !== null && Math.abs(this.view.scrollDOM.scrollTop - want) <= 1) return; // our own sync
    if (this.driver === 'editor') this.syncFromEditor();
  }

  _previewScrolled() {
    const want = this.expectScroll.preview;
    this.expectScroll.preview = null;
    if (want !== null && Math.abs(this.scroller.scrollTop - want) <= 1) return; // our own sync
    if (this.driver === 'preview') this.syncFromPreview();
  }
}

/** Styles of the exported page (the preview's look, light and dark). */
const EXPORT_CSS = `
:root { color-scheme: light dark; --ink: #1f2328; --muted: #656d76; --line: #d8dee4; --code-bg: #f6f8fa; --link: #0969da; }
@media (prefers-color-scheme: dark) { :root { --ink: #e6edf3; --muted: #9198a1; --line: #3d444d; --code-bg: #161b22; --link: #4493f8; background: #0d1117; } }
body { margin: 0; color: var(--ink); font: 16px/1.6 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Liberation Sans", Arial, sans-serif; }
article { max-width: 860px; margin: 0 auto; padding: 32px 24px 64px; overflow-wrap: break-word; }
h1, h2 { border-bottom: 1px solid var(--line); padding-bottom: .3em; }
a { color: var(--link); }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace; font-size: 85%; }
code { background: var(--code-bg); padding: .15em .35em; border-radius: 5px; }
pre { background: var(--code-bg); padding: 14px 16px; border-radius: 6px; overflow: auto; line-height: 1.45; }
pre code { background: none; padding: 0; font-size: 100%; }
blockquote { margin: 0; padding: 0 1em; color: var(--muted); border-left: .25em solid var(--line); }
table { border-collapse: collapse; display: block; overflow: auto; }
th, td { border: 1px solid var(--line); padding: 6px 13px; }
img { max-width: 100%; }
li.task-item { list-style: none; }
.task-box { margin: 0 .4em 0 -1.4em; vertical-align: middle; }
.hljs-keyword, .hljs-selector-tag, .hljs-built_in { color: #cf222e; }
.hljs-string, .hljs-attr, .hljs-regexp { color: #0a3069; }
.hljs-number, .hljs-literal { color: #0550ae; }
.hljs-comment { color: #6e7781; font-style: italic; }
.hljs-title, .hljs-section { color: #8250df; }
@media (prefers-color-scheme: dark) {
  .hljs-keyword, .hljs-selector-tag, .hljs-built_in { color: #ff7b72; }
  .hljs-string, .hljs-attr, .hljs-regexp { color: #a5d6ff; }
  .hljs-number, .hljs-literal { color: #79c0ff; }
  .hljs-comment { color: #8b949e; }
  .hljs-title, .hljs-section { color: #d2a8ff; }
}
`;

/** A standalone HTML page of the rendered document (sanitized, no script). */
export function standaloneHtml(title, text) {
  const esc = (s) => s.replace(/[&<>"]/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[ch]));
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="collab">
<title>${esc(title)}</title>
<style>${EXPORT_CSS}</style>
</head>
<body>
<article class="markdown-body">
${renderMarkdown(text)}
</article>
</body>
</html>
`;
}
