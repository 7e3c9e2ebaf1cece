// Markdown -> sanitized HTML, for the preview and the HTML export.
//
// markdown-it parses CommonMark plus GFM tables and strikethrough, with
// autolinks; task list items (`- [ ]`, `- [x]`) become disabled checkboxes;
// fenced code is highlighted by highlight.js (a fixed set of common
// languages). Raw HTML in the document is allowed through the parser but the
// result always passes DOMPurify before it reaches the DOM: no script, no
// event handler, no javascript: URL, no form, no style element. Block
// elements carry `data-line` (their first source line, 0-based, plus the
// caller's offset) so the preview can be scrolled to match the editor.

import MarkdownIt from 'markdown-it';
import DOMPurify from 'dompurify';
import hljs from 'highlight.js/lib/core';
import bash from 'highlight.js/lib/languages/bash';
import c from 'highlight.js/lib/languages/c';
import cpp from 'highlight.js/lib/languages/cpp';
import css from 'highlight.js/lib/languages/css';
import diff from 'highlight.js/lib/languages/diff';
import go from 'highlight.js/lib/languages/go';
import java from 'highlight.js/lib/languages/java';
import javascript from 'highlight.js/lib/languages/javascript';
import json from 'highlight.js/lib/languages/json';
import markdown from 'highlight.js/lib/languages/markdown';
import python from 'highlight.js/lib/languages/python';
import rust from 'highlight.js/lib/languages/rust';
import shell from 'highlight.js/lib/languages/shell';
import sql from 'highlight.js/lib/languages/sql';
import typescript from 'highlight.js/lib/languages/typescript';
import xml from 'highlight.js/lib/languages/xml';
import yaml from 'highlight.js/lib/languages/yaml';

const LANGUAGES = {
  bash, c, cpp, css, diff, go, java, javascript, json, markdown, python, rust, shell, sql, typescript, xml, yaml,
};
for (const [name, lang] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, lang);

const escapeHtml = (s) => s.replace(/[&<>"]/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[ch]));

function highlight(code, info) {
  const lang = (info || '').trim().split(/\s+/)[0].toLowerCase();
  if (lang && hljs.getLanguage(lang)) {
    try {
      return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
    } catch (e) {
      /* fall through to plain text */
    }
  }
  return escapeHtml(code);
}

const md = new MarkdownIt({ html: true, linkify: true, typographer: false, highlight });

// Raw HTML goes to DOMPurify, which parses it in an inert document: a handler
// attribute there runs nothing (and the page's CSP forbids inline handlers
// anyway), but Chromium still reports a CSP violation when, say, an <img>
// there fails to load. Event handler attributes are dropped before that; the
// sanitizer stays the one thing relied on.
const HANDLER_ATTR = /([\s/])on[a-z]+\s*=\s*("[^"]*"|'[^']*'|[^\s>]*)/gi;
const stripHandlers = (html) => html.replace(HANDLER_ATTR, '$1');
for (const rule of ['html_block', 'html_inline']) {
  md.renderer.rules[rule] = (tokens, idx) => stripHandlers(tokens[idx].content);
}

// ---- source lines ----------------------------------------------------------
const LINE_TOKENS = new Set([
  'paragraph_open', 'heading_open', 'blockquote_open', 'bullet_list_open', 'ordered_list_open',
  'list_item_open', 'table_open', 'tr_open', 'fence', 'code_block', 'hr', 'html_block',
]);

const ALIGN = /^text-align:(left|center|right)$/;

md.core.ruler.push('source_lines', (state) => {
  const offset = state.env.lineOffset || 0;
  for (const t of state.tokens) {
    if (t.map && LINE_TOKENS.has(t.type) && t.type !== 'html_block') t.attrSet('data-line', String(t.map[0] + offset));
    // Table column alignment as a class: style attributes never pass the sanitizer.
    if ((t.type === 'th_open' || t.type === 'td_open') && t.attrGet('style')) {
      const m = ALIGN.exec(t.attrGet('style'));
      t.attrs = t.attrs.filter(([k]) => k !== 'style');
      if (m) t.attrJoin('class', `align-${m[1]}`);
    }
  }
});

// ---- task lists --------------------------------------------------------------
const TASK = /^\[([ xX])\][ \t]/;

md.core.ruler.after('inline', 'task_lists', (state) => {
  const tokens = state.tokens;
  for (let i = 2; i < tokens.length; i++) {
    const inline = tokens[i];
    if (inline.type !== 'inline' || tokens[i - 1].type !== 'paragraph_open' || tokens[i - 2].type !== 'list_item_open') continue;
    const first = inline.children && inline.children[0];
    const m = first && first.type === 'text' ? TASK.exec(first.content) : null;
    if (!m) continue;
    first.content = first.content.slice(m[0].length);
    const box = new state.Token('html_inline', '', 0);
    box.content = `<input class="task-box" type="checkbox" disabled${m[1] === ' ' ? '' : ' checked'}> `;
    inline.children.unshift(box);
    tokens[i - 2].attrJoin('class', 'task-item');
  }
});

// ---- sanitizing ----------------------------------------------------------------
const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ['style', 'form', 'button', 'textarea', 'select', 'option', 'iframe', 'object', 'embed', 'base', 'link', 'meta'],
  FORBID_ATTR: ['style', 'srcset', 'action', 'formaction'],
  ALLOW_DATA_ATTR: true,
};

let hooked = false;
function installHooks() {
  if (hooked) return;
  hooked = true;
  // Links leave the page in a new tab without handing it `window.opener`.
  DOMPurify.addHook('afterSanitizeAttributes', (node) => {
    if (node.tagName === 'A' && node.getAttribute('href') && !node.getAttribute('href').startsWith('#')) {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer');
    }
    if (node.tagName === 'INPUT') {
      if (node.getAttribute('type') !== 'checkbox') node.remove();
      else node.setAttribute('disabled', '');
    }
  });
}

/** The sanitized HTML of Markdown `src`; `lineOffset` is added to every
 * `data-line` (for a rendered excerpt of a larger document). */
export function renderMarkdown(src, lineOffset = 0) {
  installHooks();
  const html = md.render(src, { lineOffset });
  return DOMPurify.sanitize(html, PURIFY);
}

/** Sanitized Markdown as a DocumentFragment, ready to insert. */
export function renderFragment(src, lineOffset = 0) {
  installHooks();
  const html = md.render(src, { lineOffset });
  return DOMPurify.sanitize(html, { ...PURIFY, RETURN_DOM_FRAGMENT: true });
}
