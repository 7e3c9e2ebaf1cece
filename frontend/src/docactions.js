// The editor's title and document menu: the title in the header and the
// browser tab (set by hand, else the first heading, else the name), edited
// by clicking it; "Rename…" and "Move to trash…". Only an editor sees the
// controls that change the document (the server's role, from `welcome`).
//
// The title set by hand is read after every welcome (GET /api/docs/{doc}/title)
// and follows the server's `title` messages, so another person's change shows
// at once, and one missed while disconnected shows on reconnect.

import { firstHeading, HEAD_CHARS, MAX_TITLE } from './titles.js';
import { getTitle, setTitle, failureText } from './docapi.js';
import { renameDialog, trashDialog } from './docdialogs.js';
import { homeUrl, leaveFor, pageUrl } from './common.js';

const $ = (id) => document.getElementById(id);

export class DocActions {
  /**
   * @param {object} opts
   * @param {string} opts.docName
   * @param {string|null} opts.token  the page's access token
   * @param {object} opts.client  the SyncClient ('ready', 'role', 'title' events; `role`)
   * @param {function} opts.head  () => the document's first HEAD_CHARS characters
   * @param {function} opts.toast  (text) => void
   * @param {function} [opts.onClose]  called when the title field closes (to give the text its focus back)
   */
  constructor({ docName, token, client, head, toast, onClose = () => {} }) {
    Object.assign(this, { docName, token, client, head, toast, onClose });
    this.manual = null; // the title set by hand, or null
    this.heading = null; // the first heading, as last read
    this.locked = false; // the session ended for good: nothing may change
    this.timer = null;
    this.btn = $('title-btn');
    this.input = $('title-input');
    this.menuBtn = $('doc-menu-btn');
    this.menu = $('doc-menu');
    $('doc-name').textContent = docName; // in the document menu; the title's tooltip names it too
    this.wire();
    this.render();
  }

  /** The title shown in the header and the tab. */
  get shown() {
    return this.manual || this.heading || this.docName;
  }

  get editable() {
    return !this.locked && this.client.role === 'edit';
  }

  wire() {
    const { client } = this;
    client.on('ready', () => {
      this.readHeading(); // the text just arrived: at once, not after the typing delay
      this.fetchTitle();
    });
    client.on('role', () => this.render());
    client.on('title', (title) => {
      this.manual = title;
      this.render();
    });
    this.btn.addEventListener('click', () => this.startEdit());
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') {
        e.preventDefault();
        this.finishEdit(true);
      } else if (e.key === 'Escape') {
        e.preventDefault();
        e.stopPropagation();
        this.finishEdit(false);
      }
    });
    this.input.addEventListener('blur', () => this.finishEdit(true));
    this.menuBtn.addEventListener('click', (e) => {
      e.stopPropagation();
      this.toggleMenu();
    });
    this.menu.addEventListener('click', (e) => e.stopPropagation());
    document.addEventListener('click', () => this.toggleMenu(false));
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && !this.menu.hidden) {
        this.toggleMenu(false);
        this.menuBtn.focus();
      }
    });
    $('doc-edit-title').addEventListener('click', () => {
      this.toggleMenu(false);
      this.startEdit();
    });
    $('doc-rename').addEventListener('click', () => this.rename());
    $('doc-trash').addEventListener('click', () => this.trash());
  }

  /** The text changed: read its first heading again, at most a few times a second. */
  changed() {
    if (this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.readHeading();
    }, 250);
  }

  readHeading() {
    this.heading = firstHeading(this.head(HEAD_CHARS));
    this.render();
  }

  async fetchTitle() {
    const r = await getTitle(this.docName, { token: this.token });
    if (r.ok && r.body && (typeof r.body.title === 'string' || r.body.title === null)) {
      this.manual = r.body.title;
      this.render();
    }
  }

  render() {
    const shown = this.shown;
    document.title = `${shown} · collab`;
    this.btn.textContent = shown;
    this.btn.classList.toggle('untitled', !this.manual && !this.heading);
    const editable = this.editable;
    this.btn.disabled = !editable;
    const name = shown === this.docName ? '' : ` (name: ${this.docName})`;
    this.btn.title = editable
      ? `${shown}${name}: click to edit the title${this.manual ? '' : ', now its first heading'}`
      : `${shown}${name}`;
    this.menuBtn.hidden = !editable;
    if (!editable) this.toggleMenu(false);
  }

  toggleMenu(open = this.menu.hidden) {
    this.menu.hidden = !open;
    this.menuBtn.setAttribute('aria-expanded', String(open));
  }

  startEdit() {
    if (!this.editable || !this.input.hidden) return;
    this.input.value = this.manual || this.heading || '';
    this.input.maxLength = MAX_TITLE;
    this.input.placeholder = this.heading ? `${this.heading} (the first heading)` : 'A title (empty: the first heading)';
    this.btn.hidden = true;
    this.input.hidden = false;
    this.input.focus();
    this.input.select();
  }

  /** Close the title field; `save`: set what it holds (empty: back to the first heading). */
  async finishEdit(save) {
    if (this.input.hidden) return;
    const value = this.input.value.trim();
    this.input.hidden = true;
    this.btn.hidden = false;
    this.onClose();
    const unchanged = value === (this.manual || '') || (!this.manual && value === (this.heading || ''));
    if (!save || unchanged) return;
    const before = this.manual;
    this.manual = value || null; // shown at once; put back if refused
    this.render();
    const r = await setTitle(this.docName, value || null, { token: this.token });
    if (!r.ok) {
      this.manual = before;
      this.render();
      this.toast(failureText('set the title', r));
      return;
    }
    if (value && r.body && typeof r.body.title === 'string') this.manual = r.body.title; // as the server cleaned it
    this.render();
    this.toast(value ? 'Title saved' : 'Title cleared: the first heading is the title');
  }

  async rename() {
    this.toggleMenu(false);
    const name = await renameDialog({ doc: this.docName, title: this.shown, token: this.token });
    // The server also closes this page's connection (4004, "document renamed to …"), which reopens it there.
    if (name) leaveFor(pageUrl(name));
  }

  async trash() {
    this.toggleMenu(false);
    const done = await trashDialog({ doc: this.docName, title: this.shown, token: this.token });
    if (done) location.assign(homeUrl('trash'));
  }

  /** The session ended for good (no access, deleted): offer nothing that changes the document. */
  lock() {
    this.locked = true;
    if (!this.input.hidden) this.finishEdit(false);
    this.render();
  }
}
