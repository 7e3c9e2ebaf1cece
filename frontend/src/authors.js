// "Show authors": the live text coloured by who wrote it, with a legend.
//
// The colours come from the server (GET /api/docs/{doc}/authorship at the
// page's revision) and are kept up to date as people type: every change maps
// the marks, and text inserted since is marked with its author at once (this
// page's user for local edits, the peer's name for remote ones). A refetch a
// moment after typing stops puts the server's names back (a token's name
// wins over the name someone joined with). Marks are classes, never styles.

import { StateField, StateEffect, Compartment, RangeSetBuilder } from '@codemirror/state';
import { EditorView, Decoration } from '@codemirror/view';
import { AuthorSlots, spansToRanges, authorLabel } from './history.js';
import { apiUrl, el } from './common.js';

const REFETCH_MS = 1500;
const setMarks = StateEffect.define();

const markCache = new Map();
function mark(slot) {
  let m = markCache.get(slot);
  if (!m) {
    m = Decoration.mark({ class: slot === null ? 'cm-author cm-author-none' : `cm-author author-${slot}`, slot });
    markCache.set(slot, m);
  }
  return m;
}

/** Marks for `ranges` ({from, to, slot}, sorted) as a decoration set. */
function buildSet(ranges) {
  const b = new RangeSetBuilder();
  for (const r of ranges) if (r.to > r.from) b.add(r.from, r.to, mark(r.slot));
  return b.finish();
}

export class AuthorColours {
  /**
   * @param {object} o
   * @param {object} o.client  the SyncClient (revision, saved, peers)
   * @param {string} o.docName
   * @param {string|null} o.token
   * @param {function} o.me  the local user's name now
   * @param {object} o.remoteEdit  the annotation remote transactions carry (value: the client id)
   */
  constructor({ client, docName, token, me, remoteEdit }) {
    Object.assign(this, { client, docName, token, me, remoteEdit });
    this.slots = new AuthorSlots();
    this.compartment = new Compartment();
    this.view = null;
    this.on = false;
    this.timer = null;
    this.asking = null; // {doc, rev, trs: [{changes, slot}]} while a request is out
    this.again = false;
    this.legendTimer = null;
    const self = this;
    this.field = StateField.define({
      create: () => Decoration.none,
      update(deco, tr) {
        for (const e of tr.effects) if (e.is(setMarks)) return e.value;
        if (!tr.docChanged) return deco;
        return self.addInserted(deco.map(tr.changes), tr.changes, self.slotOf(tr));
      },
      provide: (f) => EditorView.decorations.from(f),
    });
    this.watch = EditorView.updateListener.of((u) => {
      if (!this.on) return;
      for (const tr of u.transactions) {
        if (tr.docChanged && this.asking) this.asking.trs.push({ changes: tr.changes, slot: this.slotOf(tr) });
      }
      if (u.docChanged) {
        this.schedule(REFETCH_MS);
        this.legendSoon();
      }
    });
    client.on('saved', (saved) => { if (saved && this.on && this.again) this.schedule(0); });
  }

  /** The editor extension (the marks live in a compartment, empty while off). */
  extension() {
    return [this.compartment.of([]), this.watch];
  }

  attach(view) {
    this.view = view;
  }

  /** The colour slot for a transaction's inserted text: its author's. */
  slotOf(tr) {
    const client = tr.annotation(this.remoteEdit);
    if (client === undefined) return this.slots.slot(this.me());
    const peer = typeof client === 'string' ? this.client.peers.get(client) : null;
    const name = peer && peer.user && typeof peer.user.name === 'string' ? peer.user.name : null;
    return name ? this.slots.slot(name) : null;
  }

  /** `deco` (already mapped) plus a mark on each range `changes` inserted. */
  addInserted(deco, changes, slot) {
    const add = [];
    changes.iterChangedRanges((fromA, toA, fromB, toB) => { if (toB > fromB) add.push(mark(slot).range(fromB, toB)); });
    if (!add.length) return deco;
    return deco.update({ filter: (from, to) => !add.some((r) => from < r.to && to > r.from), add });
  }

  toggle(on = !this.on) {
    this.on = on;
    document.getElementById('authors-btn').setAttribute('aria-pressed', String(on));
    document.body.classList.toggle('show-authors', on);
    this.view.dispatch({ effects: this.compartment.reconfigure(on ? this.field : []) });
    clearTimeout(this.timer);
    this.asking = null;
    if (on) this.schedule(0);
    this.renderLegend();
  }

  schedule(ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refetch(), ms);
  }

  /** Ask the server who wrote what at the page's revision, then carry the
   * answer over the changes made while it was on its way. */
  async refetch() {
    if (!this.on) return;
    if (this.asking || !this.client.saved || this.client.rev === null) {
      // One answer at a time, and only for text the server has: ask again
      // when this answer is in, or once every edit is acknowledged.
      this.again = true;
      return;
    }
    this.again = false;
    const ask = { doc: this.view.state.doc, rev: this.client.rev, trs: [] };
    this.asking = ask;
    let spans;
    try {
      const res = await fetch(apiUrl(`/api/docs/${encodeURIComponent(this.docName)}/authorship?rev=${ask.rev}`), {
        headers: this.token ? { Authorization: `Bearer ${this.token}` } : {}, cache: 'no-store',
      });
      spans = res.status === 404 ? [] : (res.ok ? await res.json() : null);
    } catch (e) {
      spans = null;
    }
    if (this.asking !== ask) return; // turned off (or on again) meanwhile
    this.asking = null;
    if (this.again) this.schedule(REFETCH_MS);
    if (!Array.isArray(spans)) return; // keep the marks we have; the next change asks again
    const ranges = spansToRanges(spans, ask.doc.toString()).map((r) => ({ ...r, slot: this.slots.slot(r.author) }));
    let set = buildSet(ranges);
    for (const t of ask.trs) set = this.addInserted(set.map(t.changes), t.changes, t.slot);
    this.view.dispatch({ effects: setMarks.of(set) });
    this.renderLegend();
  }

  legendSoon() {
    if (this.legendTimer) return;
    this.legendTimer = setTimeout(() => {
      this.legendTimer = null;
      this.renderLegend();
    }, 250);
  }

  /** The legend: a swatch and a name for each author whose text is on the page. */
  renderLegend() {
    const box = document.getElementById('authors-legend');
    box.hidden = !this.on;
    if (!this.on) return;
    const present = new Set();
    const set = this.view.state.field(this.field, false);
    if (set) for (let it = set.iter(); it.value; it.next()) present.add(it.value.spec.slot);
    const names = new Map([...this.slots.slots].map(([name, slot]) => [slot, name]));
    box.replaceChildren(el('span', 'authors-title', 'Authors:'));
    for (const slot of [...present].sort((a, b) => (a === null) - (b === null) || a - b)) {
      const chip = el('span', 'author-chip');
      chip.dataset.slot = slot === null ? 'none' : String(slot);
      chip.append(el('span', slot === null ? 'author-swatch cm-author-none' : `author-swatch author-${slot}`),
        el('span', 'author-name', slot === null ? authorLabel('') : names.get(slot) || '?'));
      box.append(chip);
    }
  }
}
