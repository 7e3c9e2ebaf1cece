// Remote participants in the editor: each one's caret and selection drawn in
// their colour, with their name on a small label. Positions are kept in the
// editor's UTF-16 offsets and mapped through every change (local or remote),
// so carets move with the text. Names are rendered with textContent only.

import { StateField, StateEffect } from '@codemirror/state';
import { EditorView, Decoration, WidgetType } from '@codemirror/view';

/** {client, anchor, head} to place a caret, or {client, remove: true}. */
export const setPeerCursor = StateEffect.define();
/** Map of client -> {name, color}: who is here. */
export const setPeerInfo = StateEffect.define();

class CaretWidget extends WidgetType {
  constructor(client, name, color, moved) {
    super();
    this.client = client;
    this.name = name;
    this.color = color;
    this.moved = moved; // bumps each time the peer moves: a new DOM restarts the label's fade
  }

  eq(other) {
    return other.client === this.client && other.name === this.name && other.color === this.color && other.moved === this.moved;
  }

  toDOM() {
    const caret = document.createElement('span');
    caret.className = 'cm-remote-caret';
    caret.style.setProperty('--peer', this.color);
    caret.dataset.client = this.client;
    caret.setAttribute('aria-hidden', 'true');
    const label = document.createElement('span');
    label.className = 'cm-remote-label';
    label.textContent = this.name; // never innerHTML: names come from other users
    caret.appendChild(label);
    return caret;
  }

  ignoreEvent() {
    return true;
  }
}

function hexToRgba(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

const peersField = StateField.define({
  create() {
    return { cursors: new Map(), info: new Map() };
  },
  update(value, tr) {
    let { cursors, info } = value;
    if (tr.docChanged && cursors.size) {
      const mapped = new Map();
      for (const [client, c] of cursors) {
        // assoc 1: an insert exactly at a remote caret pushes it right,
        // like the server's transformIndex.
        mapped.set(client, { anchor: tr.changes.mapPos(c.anchor, 1), head: tr.changes.mapPos(c.head, 1), moved: c.moved });
      }
      cursors = mapped;
    }
    for (const e of tr.effects) {
      if (e.is(setPeerCursor)) {
        if (cursors === value.cursors) cursors = new Map(cursors);
        if (e.value.remove) cursors.delete(e.value.client);
        else {
          const len = tr.state.doc.length;
          const prev = cursors.get(e.value.client);
          cursors.set(e.value.client, {
            anchor: Math.min(Math.max(0, e.value.anchor), len),
            head: Math.min(Math.max(0, e.value.head), len),
            moved: prev ? prev.moved + 1 : 0,
          });
        }
      } else if (e.is(setPeerInfo)) {
        info = e.value;
      }
    }
    if (cursors === value.cursors && info === value.info) return value;
    return { cursors, info };
  },
  provide: (field) => EditorView.decorations.compute([field], (state) => {
    const { cursors, info } = state.field(field);
    const ranges = [];
    for (const [client, c] of cursors) {
      const who = info.get(client);
      if (!who) continue;
      if (c.anchor !== c.head) {
        ranges.push(Decoration.mark({
          class: 'cm-remote-selection',
          attributes: { style: `background-color: ${hexToRgba(who.color, 0.22)}` },
        }).range(Math.min(c.anchor, c.head), Math.max(c.anchor, c.head)));
      }
      ranges.push(Decoration.widget({ widget: new CaretWidget(client, who.name, who.color, c.moved), side: 1 }).range(c.head));
    }
    return Decoration.set(ranges, true);
  }),
});

export function presenceExtension() {
  return [peersField];
}

/** Current remote cursors (UTF-16), for tests and the UI. */
export function peerCursors(state) {
  return state.field(peersField).cursors;
}
