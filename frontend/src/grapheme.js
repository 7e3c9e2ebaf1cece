// Backspace by whole emoji: CodeMirror's Backspace removes the last code
// point of a character cluster (so "é" written as e + accent loses only the
// accent), which leaves "👋" behind when "👋🏽" is deleted, or half a family
// emoji. This command deletes the whole cluster when it is an emoji sequence
// (skin tone, joiner, variation selector, flag) and otherwise leaves
// Backspace to CodeMirror.

import { EditorSelection, findClusterBreak } from '@codemirror/state';

const EMOJI_PART = /\p{Extended_Pictographic}|\u200d|\ufe0f|[\u{1F3FB}-\u{1F3FF}]|[\u{1F1E6}-\u{1F1FF}]|[\u{E0020}-\u{E007F}]/u;

/** The start of the emoji cluster that ends at `pos`, or null when the
 * cluster before `pos` is not an emoji sequence of more than one code point. */
export function emojiClusterStart(lineText, pos) {
  if (pos <= 0) return null;
  const start = findClusterBreak(lineText, pos, false, true);
  const cluster = lineText.slice(start, pos);
  if (Array.from(cluster).length < 2 || !EMOJI_PART.test(cluster)) return null;
  return start;
}

/** Backspace deleting a whole emoji sequence before each empty cursor. */
export function deleteEmojiBackward(view) {
  const { state } = view;
  if (state.readOnly || state.selection.ranges.some((r) => !r.empty)) return false;
  const changes = [];
  for (const r of state.selection.ranges) {
    const line = state.doc.lineAt(r.head);
    const start = emojiClusterStart(line.text, r.head - line.from);
    if (start === null) return false;
    changes.push({ from: line.from + start, to: r.head });
  }
  const cs = state.changes(changes);
  view.dispatch({
    changes: cs,
    selection: EditorSelection.create(state.selection.ranges.map((r) => EditorSelection.cursor(cs.mapPos(r.head, -1)))),
    scrollIntoView: true,
    userEvent: 'delete.backward',
  });
  return true;
}
