// The history panel: editing sessions (newest first, paged), a slider over
// revisions, a read-only preview of the chosen revision with what changed
// since highlighted, and "Restore this version" (edit access only).
//
// The preview is a second, read-only CodeMirror view: the live editor keeps
// its document, its unsent edits and its connection, and goes on receiving
// everyone's changes while hidden. A restore is a server-side edit
// (POST /api/docs/{doc}/restore) that reaches this page like any other change.

import { EditorState, StateField, StateEffect, RangeSetBuilder } from '@codemirror/state';
import { EditorView, Decoration, WidgetType } from '@codemirror/view';
import { changesSince, sessionSummary, sessionTime } from './history.js';
import { apiUrl, el } from './common.js';

const PAGE = 30;

const setDiff = StateEffect.define();

class InsertedMark extends WidgetType {
  constructor(count) {
    super();
    this.count = count;
  }

  eq(other) { return other.count === this.count; }

  toDOM() {
    const s = el('span', 'hist-ins');
    s.title = `${this.count} character${this.count === 1 ? '' : 's'} added here since`;
    s.setAttribute('aria-label', s.title);
    return s;
  }
}

const diffField = StateField.define({
  create: () => Decoration.none,
  update(deco, tr) {
    for (const e of tr.effects) if (e.is(setDiff)) return e.value;
    return deco.map(tr.changes);
  },
  provide: (f) => EditorView.decorations.from(f),
});

/** Decorations on `old` marking what is gone now and where text was added. */
function diffDecorations(old, now) {
  const { deleted, inserted } = changesSince(old, now);
  const marks = [];
  for (const d of deleted) marks.push({ at: d.from, deco: Decoration.mark({ class: 'hist-del' }).range(d.from, d.to) });
  for (const i of inserted) {
    marks.push({ at: i.at, deco: Decoration.widget({ widget: new InsertedMark(i.count), side: -1 }).range(i.at) });
  }
  marks.sort((a, b) => a.at - b.at || a.deco.value.startSide - b.deco.value.startSide);
  const b = new RangeSetBuilder();
  for (const m of marks) b.add(m.deco.from, m.deco.to, m.deco.value);
  return { set: b.finish(), changed: deleted.length + inserted.length };
}

export class HistoryPanel {
  /**
   * @param {object} o
   * @param {EditorView} o.view  the live editor (read, never changed here)
   * @param {object} o.client  the SyncClient (revision, role)
   * @param {string} o.docName
   * @param {string|null} o.token
   * @param {Array} o.extensions  the preview's look (highlighting, theme)
   * @param {function} o.toast
   * @param {function} o.onToggle  called with true/false when the panel opens or closes
   * @param {function} o.onRestore  called with ('start'), ('done', rev) or ('failed') around a restore
   */
  constructor({ view, client, docName, token, extensions, toast, onToggle, onRestore }) {
    Object.assign(this, { live: view, client, docName, token, toast, onToggle, onRestore });
    this.$ = (id) => document.getElementById(id);
    this.open = false;
    this.sessions = [];
    this.rev = null; // the revision shown
    this.gen = 0; // the revision asked for last
    this.listGen = 0; // the session list's opening
    this.timer = null;
    this.listTimer = null;
    this.pageSize = PAGE; // sessions asked for at a time
    this.extensions = extensions;
    this.preview = null; // the read-only view, made when the panel first opens
    this.slider = this.$('history-slider');
    this.slider.addEventListener('input', () => this.choose(Number(this.slider.value), 150));
    this.$('history-close').addEventListener('click', () => this.toggle(false));
    this.$('history-older').addEventListener('click', () => this.loadSessions('older'));
    this.$('history-restore').addEventListener('click', () => this.restore());
    this.$('history-live').addEventListener('click', () => this.choose(this.head(), 0));
    client.on('remote', () => this.headMoved());
    client.on('saved', () => this.headMoved());
    client.on('role', () => this.renderActions());
  }

  /** The read-only view of the chosen revision (made on first use, so a page
   * that never opens history has one editor). */
  previewView() {
    if (!this.preview) {
      this.preview = new EditorView({
        parent: this.$('history-text'),
        state: EditorState.create({
          doc: '',
          extensions: [
            EditorState.lineSeparator.of('\n'), EditorState.readOnly.of(true), EditorView.editable.of(false),
            EditorView.lineWrapping, diffField, ...this.extensions,
            EditorView.contentAttributes.of({ 'aria-label': 'The chosen revision (read-only)' }),
          ],
        }),
      });
    }
    return this.preview;
  }

  head() { return this.client.rev || 0; }

  headers() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  url(path) {
    return `/api/docs/${encodeURIComponent(this.docName)}${path}`;
  }

  toggle(open = !this.open) {
    if (open === this.open) return;
    this.open = open;
    this.$('history').hidden = !open;
    this.$('history-btn').setAttribute('aria-pressed', String(open));
    document.body.classList.toggle('history-open', open);
    this.onToggle(open);
    this.listGen++;
    clearTimeout(this.listTimer);
    if (!open) {
      this.gen++;
      return;
    }
    this.previewView();
    this.sessions = [];
    this.$('history-list').replaceChildren();
    this.loadSessions('first');
    this.choose(this.head(), 0);
    this.slider.focus();
  }

  /** The live head moved: follow it when the newest revision is shown. */
  headMoved() {
    if (!this.open || this.client.rev === null) return;
    const atHead = this.rev === Number(this.slider.max);
    this.slider.max = String(this.head());
    if (atHead) this.choose(this.head(), 300);
    else this.renderActions();
    clearTimeout(this.listTimer);
    this.listTimer = setTimeout(() => this.loadSessions('newer'), 1000);
  }

  /** Sessions from the server: the newest page (`'first'`), the page after
   * the last one listed (`'older'`), or the newest page merged over the
   * list as it is (`'newer'`: new edits arrived while the panel is open). */
  async loadSessions(which) {
    const gen = this.listGen;
    const before = which === 'older' && this.sessions.length ? this.sessions[this.sessions.length - 1].from : null;
    const q = new URLSearchParams({ limit: String(this.pageSize) });
    if (before !== null) q.set('before', String(before));
    const note = this.$('history-note');
    let got = [];
    try {
      const res = await fetch(apiUrl(this.url(`/revisions?${q}`)), { headers: this.headers(), cache: 'no-store' });
      if (res.status === 404) got = []; // never edited: no history yet
      else if (!res.ok) throw new Error(`HTTP ${res.status}`);
      else got = await res.json();
    } catch (e) {
      if (gen === this.listGen) note.textContent = `Could not load the history (${e.message}). Close and open it to retry.`;
      return;
    }
    if (gen !== this.listGen) return;
    const list = this.$('history-list');
    if (which === 'newer') {
      if (!got.length) return;
      const oldest = got[got.length - 1].from;
      const wasEmpty = !this.sessions.length;
      this.sessions = got.concat(this.sessions.filter((x) => x.to < oldest));
      list.replaceChildren(...this.sessions.map((x) => this.sessionItem(x)));
      if (wasEmpty) this.$('history-older').hidden = got.length < this.pageSize;
    } else {
      this.sessions.push(...got);
      for (const x of got) list.append(this.sessionItem(x));
      this.$('history-older').hidden = got.length < this.pageSize;
    }
    note.textContent = this.sessions.length ? '' : 'No edits yet.';
    this.markChosen();
  }

  sessionItem(s) {
    const { authors, counts, revs } = sessionSummary(s);
    const li = el('li', 'history-session');
    const b = el('button', 'history-pick');
    b.type = 'button';
    b.dataset.rev = String(s.to);
    b.append(el('span', 'history-when', sessionTime(s)), el('span', 'history-who', authors));
    const meta = el('span', 'history-meta');
    meta.append(el('span', 'history-counts', counts), el('span', 'history-revs', revs));
    b.append(meta);
    b.title = `Show the text after ${revs}`;
    b.addEventListener('click', () => this.choose(s.to, 0));
    li.append(b);
    return li;
  }

  markChosen() {
    for (const b of this.$('history-list').querySelectorAll('.history-pick')) {
      if (Number(b.dataset.rev) === this.rev) b.setAttribute('aria-current', 'true');
      else b.removeAttribute('aria-current');
    }
  }

  /** Show revision `rev` (after `delay` ms, so dragging the slider asks the server only when it rests). */
  choose(rev, delay) {
    this.slider.max = String(this.head());
    this.slider.value = String(rev);
    this.rev = rev;
    const label = rev >= this.head() ? `Revision ${rev} (now)` : `Revision ${rev} of ${this.head()}`;
    this.$('history-label').textContent = label;
    this.slider.setAttribute('aria-valuetext', label);
    this.markChosen();
    this.renderActions();
    clearTimeout(this.timer);
    const gen = ++this.gen;
    this.timer = setTimeout(() => this.show(rev, gen), delay);
  }

  async show(rev, gen) {
    const box = this.$('history');
    box.dataset.state = 'loading';
    let text;
    try {
      const res = await fetch(apiUrl(this.url(`/text?rev=${rev}`)), { headers: this.headers(), cache: 'no-store' });
      if (res.status === 404 && rev === 0) text = '';
      else if (res.status === 410) throw new Error('this revision was thinned from the history; choose the end of a session');
      else if (!res.ok) throw new Error(`HTTP ${res.status}`);
      else text = await res.text();
    } catch (e) {
      if (gen !== this.gen) return;
      this.$('history-summary').textContent = `Could not show revision ${rev}: ${e.message}.`;
      box.dataset.state = 'error';
      return;
    }
    if (gen !== this.gen) return;
    const now = this.live.state.doc.toString();
    const { set, changed } = diffDecorations(text, now);
    this.previewView().dispatch({
      changes: { from: 0, to: this.preview.state.doc.length, insert: text },
      effects: setDiff.of(set),
    });
    this.$('history-summary').textContent = changed
      ? 'Changed since: struck through is gone now, ▍ marks text added there.'
      : 'The same as the text now.';
    box.dataset.rev = String(rev);
    box.dataset.state = 'ready';
  }

  renderActions() {
    const restore = this.$('history-restore');
    const canEdit = this.client.role === 'edit' && !document.body.classList.contains('denied');
    restore.hidden = !canEdit;
    restore.disabled = this.rev === null || this.rev >= this.head();
    this.$('history-live').disabled = this.rev === null || this.rev >= this.head();
  }

  async restore() {
    const rev = this.rev;
    if (rev === null || this.client.role !== 'edit') return;
    const btn = this.$('history-restore');
    btn.disabled = true;
    this.onRestore('start');
    let answer;
    try {
      const res = await fetch(apiUrl(this.url('/restore')), {
        method: 'POST',
        headers: { ...this.headers(), 'Content-Type': 'application/json' },
        body: JSON.stringify({ rev }),
      });
      if (!res.ok) {
        let msg = `HTTP ${res.status}`;
        try { msg = (await res.clone().json()).message || msg; } catch (e) { msg = (await res.text()) || msg; }
        throw new Error(msg);
      }
      answer = await res.json();
    } catch (e) {
      this.onRestore('failed');
      this.$('history-summary').textContent = `Could not restore revision ${rev}: ${e.message}.`;
      this.renderActions();
      return;
    }
    this.onRestore('done', answer.rev);
    this.toast(`Restored revision ${rev} (Ctrl+Z takes it back)`);
    this.toggle(false);
  }
}
