// The editor's Markdown language: CodeMirror's incremental Lezer parser
// (CommonMark + GFM), with paragraphs capped in length.
//
// Lezer reuses the blocks an edit did not touch, but a paragraph is one
// block: in a document with no blank lines, every keystroke would reparse
// (and re-highlight) the whole text. Ending a paragraph block once it holds
// MAX_LEAF characters keeps each reparse bounded; the next line simply
// starts a new block. Only the highlighting sees the cut (an emphasis that
// spans it is not shown as one); the preview renders the text as written.

import { Language } from '@codemirror/language';
import { markdownLanguage } from '@codemirror/lang-markdown';

/** Characters after which a paragraph (or other leaf block) ends at the next line. */
export const MAX_LEAF = 2000;

const capLeaves = {
  parseBlock: [{
    name: 'CapLongLeaf',
    parse: () => false,
    endLeaf: (cx, line, leaf) => leaf.content.length >= MAX_LEAF,
  }],
};

/** Markdown with bounded leaf blocks; the same language data as
 * `markdownLanguage`, so its commands (Enter continuing a list) still apply. */
export const boundedMarkdown = new Language(markdownLanguage.data, markdownLanguage.parser.configure([capLeaves]), [], 'markdown');
