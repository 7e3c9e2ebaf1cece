// The editor page (/d/{doc}): CodeMirror 6 wired to the OT client.
//
// Data flow: a local CodeMirror transaction -> changesToOp -> SyncClient ->
// Session (WebSocket). A server op -> SyncClient (transformed through our
// pending ops) -> applyRemote -> a CodeMirror transaction marked remote and
// kept out of the undo history, so undo only ever undoes our own edits.

import { EditorState, Compartment, Transaction, Annotation } from '@codemirror/state';
import {
  EditorView, keymap, drawSelection, highlightActiveLine, highlightSpecialChars, placeholder, dropCursor,
  rectangularSelection,
} from '@codemirror/view';
import { history, isolateHistory, defaultKeymap, historyKeymap, indentWithTab, undo, redo, undoDepth, redoDepth } from '@codemirror/commands';
import { insertNewlineContinueMarkup, deleteMarkupBackward } from '@codemirror/lang-markdown';
import { boundedMarkdown } from './mdlang.js';
import { syntaxHighlighting, syntaxTree, syntaxTreeAvailable, HighlightStyle, defaultHighlightStyle, bracketMatching } from '@codemirror/language';
import { searchKeymap, highlightSelectionMatches } from '@codemirror/search';
import { tags } from '@lezer/highlight';

import { SyncClient } from './client.js';
import { Session } from './session.js';
import { cpBefore, utf16At, cpTotal, docChangesToOp, opToDocChanges, wordDelta } from './textindex.js';
import { cpLength } from './ot.js';
import { CLOSE_CODES } from './protocol.js';
import { presenceExtension, setPeerCursor, setPeerInfo } from './presence.js';
import {
  ROLES, rolesToAsk, mintLink, summarize, expiryText, copiedText, tokenClaims,
  listLinks, revokeLink, activeLinks, linkLabel, linkDetails, deniedText,
} from './share.js';
import { deleteEmojiBackward } from './grapheme.js';
import { HistoryPanel } from './histpanel.js';
import { AuthorColours } from './authors.js';
import { DocActions } from './docactions.js';
import {
  wsUrl, pageToken, loadUser, saveUser, safeColor, initials, el, PALETTE, DOC_NAME_RE, applyTheme, nextTheme, themeChoice, leaveFor,
} from './common.js';

applyTheme();

const $ = (id) => document.getElementById(id);
const remoteEdit = Annotation.define();

const docName = decodeURIComponent(location.pathname.replace(/^\/d\//, '').replace(/\/$/, ''));

let user = loadUser();

// ---- markdown look ----------------------------------------------------------
// Colours are CSS variables (style.css), so the light and dark themes share these rules.
const mdHighlight = HighlightStyle.define([
  { tag: tags.heading1, class: 'tok-heading1', fontWeight: '700' },
  { tag: tags.heading2, class: 'tok-heading2', fontWeight: '700' },
  { tag: [tags.heading3, tags.heading4, tags.heading5, tags.heading6], fontWeight: '700' },
  { tag: tags.strong, fontWeight: '700' },
  { tag: tags.emphasis, fontStyle: 'italic' },
  { tag: tags.strikethrough, textDecoration: 'line-through' },
  { tag: tags.link, color: 'var(--md-link)', textDecoration: 'underline' },
  { tag: tags.url, color: 'var(--md-link)' },
  { tag: tags.monospace, color: 'var(--md-code)', backgroundColor: 'var(--md-code-bg)', borderRadius: '3px' },
  { tag: tags.quote, color: 'var(--md-quote)', fontStyle: 'italic' },
  { tag: [tags.processingInstruction, tags.meta], color: 'var(--md-meta)' },
  { tag: tags.contentSeparator, color: 'var(--md-meta)' },
]);

const theme = EditorView.theme({
  '&': { backgroundColor: 'transparent', color: 'var(--ink)' },
  '.cm-activeLine': { backgroundColor: 'var(--active-line)' },
  '.cm-cursor': { borderLeftColor: 'var(--ink)', borderLeftWidth: '2px' },
  '&.cm-focused .cm-selectionBackground, .cm-selectionBackground, ::selection': { backgroundColor: 'var(--selection) !important' },
  '.cm-panels': { backgroundColor: 'var(--paper)', color: 'var(--ink)' },
});

const editable = new Compartment();
const hint = new Compartment();

// ---- the view ---------------------------------------------------------------
let view; // assigned below; the adapter is only called after that

// A restore this page asked for: its operation (an HTTP edit, id "http-…")
// goes into this page's undo history, so Ctrl+Z takes the restore back like
// one's own edit. `rev` is null until the server's answer names it.
const restoring = { active: false, rev: null };

function isOwnRestore(meta) {
  if (!restoring.active || !meta || typeof meta.id !== 'string' || !meta.id.startsWith('http-')) return false;
  return restoring.rev === null || restoring.rev === meta.rev;
}

const adapter = {
  applyRemote(op, meta) {
    const state = view.state;
    const changes = state.changes(opToDocChanges(state.doc, op));
    const effects = keepCaretInPlace(changes);
    const own = isOwnRestore(meta);
    if (own) restoring.active = false;
    view.dispatch({
      changes,
      effects,
      annotations: [
        remoteEdit.of(meta ? meta.client || true : true), Transaction.remote.of(true),
        own ? isolateHistory.of('full') : Transaction.addToHistory.of(false),
      ],
    });
  },
  getCursor() {
    const { doc, selection: { main } } = view.state;
    const anchor = cpBefore(doc, main.anchor);
    return { anchor, head: main.head === main.anchor ? anchor : cpBefore(doc, main.head) };
  },
};

/** When a remote edit lands above the caret, keep the caret's line at the
 * same place on screen instead of letting the text jump. */
function keepCaretInPlace(changes) {
  if (!view) return [];
  const head = view.state.selection.main.head;
  let moved = false;
  changes.iterChangedRanges((fromA) => { if (fromA < head) moved = true; });
  if (!moved) return [];
  const coords = view.coordsAtPos(head);
  const box = view.scrollDOM.getBoundingClientRect();
  if (!coords || coords.top < box.top || coords.bottom > box.bottom) {
    return [view.scrollSnapshot().map(changes)];
  }
  return [EditorView.scrollIntoView(changes.mapPos(head), { y: 'start', yMargin: coords.top - box.top })];
}

/** A message size limit forced from localStorage (`collab.maxMessageBytes`),
 * for debugging a server or proxy with a smaller limit than it announces. */
function forcedMaxMessageBytes() {
  try {
    const n = Number.parseInt(localStorage.getItem('collab.maxMessageBytes') || '', 10);
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch (e) {
    return null;
  }
}

const client = new SyncClient({ editor: adapter, user, forceMaxMessageBytes: forcedMaxMessageBytes() });
// Is the server back? /healthz answers without a token and costs the server a store ping.
const probeServer = () => fetch('/healthz', { cache: 'no-store', signal: AbortSignal.timeout(5000) }).then((res) => res.ok);
const session = new Session({ url: wsUrl(docName), client, probe: probeServer });

let cursorTimer = null;
function scheduleCursor() {
  if (cursorTimer) return;
  cursorTimer = setTimeout(() => {
    cursorTimer = null;
    client.localCursor(adapter.getCursor());
  }, 30);
}

// Every step here costs the size of the edit, not of the document: a
// keystroke in a 2 MB document must not read 2 MB.
let wordCount = 0;
let preview = null; // the rendered view, once loaded (see setMode)
let docActions = null; // the title (header and tab) and the document menu, once the view exists

const syncListener = EditorView.updateListener.of((update) => {
  for (const tr of update.transactions) {
    if (!tr.docChanged) continue;
    wordCount += wordDelta(tr.startState.doc, tr.state.doc, tr.changes);
    if (tr.annotation(remoteEdit)) continue;
    const changes = [];
    tr.changes.iterChanges((fromA, toA, fromB, toB, inserted) => {
      changes.push({ from: fromA, to: toA, insert: inserted.toString() });
    });
    client.localEdit(docChangesToOp(tr.startState.doc, changes), adapter.getCursor());
  }
  if (update.docChanged || update.selectionSet) scheduleCursor();
  if (update.docChanged) {
    scheduleCounts();
    docActions.changed(); // the first heading may have changed
    if (preview) preview.changed();
  }
  if (update.selectionSet || update.docChanged) updateLineCol(update.state);
  if (update.transactions.length) updateUndoButtons(update.state);
});

const authors = new AuthorColours({ client, docName, token: pageToken(), me: () => user.name, remoteEdit });

view = new EditorView({
  parent: $('editor'),
  state: EditorState.create({
    doc: '',
    extensions: [
      // Only "\n" separates lines, so the editor's text is exactly the
      // server's (a "\r" stays a character instead of being normalized away).
      EditorState.lineSeparator.of('\n'),
      highlightSpecialChars(),
      history(),
      drawSelection(),
      dropCursor(),
      rectangularSelection(),
      highlightActiveLine(),
      highlightSelectionMatches(),
      bracketMatching(),
      EditorView.lineWrapping,
      // The markdown language alone (not markdown(), which pulls in the HTML,
      // CSS and JavaScript modes for embedded code: a third of the bundle),
      // with paragraphs bounded so that a keystroke reparses a bounded span.
      boundedMarkdown,
      syntaxHighlighting(mdHighlight),
      syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
      hint.of(placeholder('Start writing… (Markdown)')),
      keymap.of([
        { key: 'Enter', run: insertNewlineContinueMarkup },
        { key: 'Backspace', run: deleteMarkupBackward },
        { key: 'Backspace', run: deleteEmojiBackward },
        { key: 'F1', run: () => { openHelp(); return true; } },
        ...defaultKeymap, ...historyKeymap, ...searchKeymap, indentWithTab]),
      editable.of([EditorState.readOnly.of(true), EditorView.editable.of(false)]),
      presenceExtension(),
      authors.extension(),
      theme,
      syncListener,
      EditorView.contentAttributes.of({ 'aria-label': `Document ${docName}`, spellcheck: 'true', autocapitalize: 'sentences' }),
    ],
  }),
});

authors.attach(view);

docActions = new DocActions({
  docName, token: pageToken(), client, toast,
  head: (n) => view.state.doc.sliceString(0, n),
  onClose: () => { if (mode !== 'view' && !view.state.readOnly) view.focus(); },
});

// Exposed for debugging and the browser tests (read-only use).
window.collab = {
  view, client, session, undo: () => undo(view), redo: () => redo(view), syntaxTree: () => syntaxTree(view.state),
  parsed: () => syntaxTreeAvailable(view.state),
};

// ---- read-only --------------------------------------------------------------
function setRole(role) {
  const ro = role === 'read';
  $('readonly-badge').hidden = !ro;
  document.body.classList.toggle('readonly', ro);
  view.dispatch({ effects: editable.reconfigure([EditorState.readOnly.of(ro), EditorView.editable.of(!ro)]) });
  updateUndoButtons(view.state);
}

let firstWelcome = true;
client.on('ready', () => {
  if (firstWelcome) {
    firstWelcome = false;
    setRole(client.role);
    if (client.role === 'read') setMode('view'); // a read-only link is for reading
    else view.focus();
  }
  $('rev').textContent = `rev ${client.rev}`;
});
client.on('role', (role) => {
  if (firstWelcome) return;
  if (role === 'read' && !view.state.readOnly) toast('Your access is now read-only');
  setRole(role);
});
client.on('remote', () => { $('rev').textContent = `rev ${client.rev}`; });

// ---- peers --------------------------------------------------------------------
function peerInfoMap() {
  const info = new Map();
  for (const [id, p] of client.peers) {
    const name = (p.user && typeof p.user.name === 'string' && p.user.name.trim()) ? p.user.name.slice(0, 64) : 'Anonymous';
    info.set(id, { name, color: safeColor(p.user && p.user.color, id) });
  }
  return info;
}

const narrow = window.matchMedia('(max-width: 720px)');
narrow.addEventListener('change', () => renderPeople(peerInfoMap()));

function renderPeople(info) {
  const list = $('people');
  list.replaceChildren();
  const all = [{ name: `${user.name} (you)`, color: user.color, me: true }, ...info.values()];
  // On a phone the header has room for three avatars (with "+N" after them).
  const shown = all.slice(0, narrow.matches ? 2 : 6);
  for (const p of shown) {
    const li = el('li', p.me ? 'person me' : 'person');
    const av = el('span', 'avatar', initials(p.name.replace(/ \(you\)$/, '')));
    av.style.setProperty('--peer', p.color);
    av.title = p.name;
    li.appendChild(av);
    li.appendChild(el('span', 'sr-only person-name', p.name));
    list.appendChild(li);
  }
  if (all.length > shown.length) {
    const li = el('li', 'person');
    const more = el('span', 'avatar more', `+${all.length - shown.length}`);
    more.title = all.slice(shown.length).map((p) => p.name).join(', ');
    li.appendChild(more);
    list.appendChild(li);
  }
  list.title = `${all.length} here: ${all.map((p) => p.name).join(', ')}`;
}

client.on('peers', () => {
  const info = peerInfoMap();
  view.dispatch({ effects: setPeerInfo.of(info) });
  renderPeople(info);
});

client.on('cursor', (id, cursor) => {
  if (!cursor) {
    view.dispatch({ effects: setPeerCursor.of({ client: id, remove: true }) });
    return;
  }
  const doc = view.state.doc;
  const anchor = utf16At(doc, Math.max(0, cursor.anchor));
  const head = cursor.head === cursor.anchor ? anchor : utf16At(doc, Math.max(0, cursor.head));
  view.dispatch({ effects: setPeerCursor.of({ client: id, anchor, head }) });
});

// ---- status -------------------------------------------------------------------
const STATUS_TEXT = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
  closed: 'Disconnected',
};

function renderStatus() {
  const s = session.status;
  const conn = $('conn-status');
  conn.dataset.state = s;
  let connText = STATUS_TEXT[s] || s;
  const wait = session.nextRetryAt ? Math.ceil((session.nextRetryAt - Date.now()) / 1000) : 0;
  if (s === 'reconnecting' && wait >= 2) connText = `Reconnecting in ${wait} s…`;
  conn.querySelector('.conn-text').textContent = connText;
  // A long wait between attempts: offer to try at once.
  $('retry-now').hidden = !(s === 'reconnecting' && session.timer !== null && wait >= 2);
  const save = $('save-status');
  let state;
  let text;
  if (client.saved) {
    state = 'saved';
    text = 'All changes saved';
  } else if (s === 'connected') {
    state = 'saving';
    text = 'Saving…';
  } else {
    state = 'unsaved';
    text = 'Unsaved changes — kept here until reconnected';
  }
  save.dataset.state = state;
  save.textContent = text;
  if (client.rev === null) save.hidden = true;
  else save.hidden = false;
}

// While waiting to reconnect, count down to the next attempt.
setInterval(() => { if (session.status === 'reconnecting') renderStatus(); }, 1000);
$('retry-now').addEventListener('click', () => session.retryNow());
// Coming back to the tab after an outage: try at once rather than at the end of the backoff.
document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') session.retryNow(); });
window.addEventListener('focus', () => session.retryNow());

session.onStatus((s, detail) => {
  renderStatus();
  if (s === 'closed' && detail) showDenied(detail);
  else if (s === 'connected' && $('banner').dataset.kind !== 'too-large') hideBanner();
});
// The server's word for its operator (documents on a disk that looks temporary): one line, kept.
fetch('/healthz', { headers: { Accept: 'application/json' } })
  .then((res) => res.json())
  .then((body) => {
    if (body && typeof body.notice === 'string' && body.notice) {
      $('operator-notice').textContent = body.notice;
      $('operator-notice').hidden = false;
    }
  })
  .catch(() => {})
  .finally(() => { $('operator-notice').dataset.checked = '1'; });

let bannerTimer = null;
client.on('saved', () => {
  renderStatus();
  if (client.rev !== null) $('rev').textContent = `rev ${client.rev}`;
  if (client.saved && $('banner').dataset.kind === 'too-large' && !$('banner').hidden) {
    showBanner('The large edit was sent in smaller pieces. All changes saved.', 'info', 'too-large-done');
    bannerTimer = setTimeout(hideBanner, 8000);
  }
});

client.on('too-large', (info) => {
  const kb = (n) => `${Math.round(n / 1024).toLocaleString()} KB`;
  showBanner(
    info.stuck
      ? `This edit is too large for this server, even in pieces of ${kb(info.limit)}. It is kept here (not lost): `
        + 'copy it somewhere safe, or ask the administrator to raise COLLAB_MAX_MESSAGE_BYTES.'
      : `This edit is too large for this server in one message (${kb(info.bytes)}). It is kept here and is `
        + `being sent in smaller pieces (up to ${kb(info.limit)})…`,
    'warn', 'too-large',
  );
});

client.on('refused', (msg) => {
  showBanner(`The server refused an edit (${msg.code}: ${msg.message || 'no reason given'}); it was undone here.`);
});
client.on('server-error', (msg) => {
  if (msg && msg.code && msg.code !== 'rate_limited') console.warn('collab: server error', msg);
});

function showBanner(text, kind = '', what = '') {
  clearTimeout(bannerTimer);
  const b = $('banner');
  b.textContent = text;
  b.className = `banner ${kind}`;
  b.dataset.kind = what;
  b.hidden = false;
}
function hideBanner() {
  clearTimeout(bannerTimer);
  $('banner').hidden = true;
  $('banner').dataset.kind = '';
}

let toastTimer = null;
function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 2200);
}

window.addEventListener('beforeunload', (e) => {
  if (!client.saved) {
    e.preventDefault();
    e.returnValue = ''; // legacy browsers need a value to show the prompt
  }
});
window.addEventListener('offline', () => session.offline());
window.addEventListener('online', () => session.online());

// ---- counts and position --------------------------------------------------------
let countsPending = false;
function scheduleCounts() {
  if (countsPending) return;
  countsPending = true;
  requestAnimationFrame(() => {
    countsPending = false;
    const chars = cpTotal(view.state.doc);
    const words = wordCount;
    $('char-count').textContent = `${chars.toLocaleString()} character${chars === 1 ? '' : 's'}`;
    $('word-count').textContent = `${words.toLocaleString()} word${words === 1 ? '' : 's'}`;
  });
}

function updateLineCol(state) {
  const head = state.selection.main.head;
  const line = state.doc.lineAt(head);
  $('line-col').textContent = `Ln ${line.number}, Col ${cpLength(line.text.slice(0, head - line.from)) + 1}`;
}

function updateUndoButtons(state) {
  const ro = state.readOnly;
  $('undo-btn').disabled = ro || undoDepth(state) === 0;
  $('redo-btn').disabled = ro || redoDepth(state) === 0;
}

// ---- toolbar ----------------------------------------------------------------------
$('undo-btn').addEventListener('click', () => { undo(view); view.focus(); });
$('redo-btn').addEventListener('click', () => { redo(view); view.focus(); });

// ---- share ------------------------------------------------------------------------
// With a token in the page, "Share" opens a menu of the links the server lets
// this token mint (asked afresh each time it opens, so they are ready to copy
// within the click); on an open server (no token) "Copy link" copies the plain
// page URL, since everyone may edit and a read-only link cannot be enforced.
const token = pageToken();
const shareBtn = $('copy-link');
const shareMenu = $('share-menu');
const shareItems = { edit: $('share-edit'), read: $('share-read') };
const shareNote = $('share-note');
let shareLinks = {};
let shareGen = 0;

if (token) {
  shareBtn.textContent = 'Share';
  shareBtn.title = 'Copy a link to this document for someone else';
  shareBtn.setAttribute('aria-haspopup', 'true');
  shareBtn.setAttribute('aria-expanded', 'false');
} else {
  shareBtn.textContent = 'Copy link';
  shareBtn.title = 'Copy a link to this document. Everyone who can reach this server may edit it: '
    + 'read-only links need a secret on the server (COLLAB_SECRET).';
}

function setShareNote(text) {
  shareNote.textContent = text || '';
  shareNote.hidden = !text;
}

function showShareMenu() {
  downloadMenu.hidden = true;
  downloadBtn.setAttribute('aria-expanded', 'false');
  shareMenu.hidden = false;
  if (token) shareBtn.setAttribute('aria-expanded', 'true');
}

function closeShareMenu() {
  shareGen++;
  shareMenu.hidden = true;
  $('share-fallback').hidden = true;
  if (token) shareBtn.setAttribute('aria-expanded', 'false');
}

async function refreshShareMenu() {
  const gen = ++shareGen;
  shareLinks = {};
  for (const b of Object.values(shareItems)) b.hidden = true;
  $('share-fallback').hidden = true;
  shareMenu.dataset.state = 'loading';
  setShareNote('Checking which links you may share…');
  const roles = rolesToAsk(token, client.role);
  const [results, listed] = await Promise.all([
    Promise.all(roles.map((role) => mintedLink(role))),
    listLinks({ doc: docName, token }),
  ]);
  if (gen !== shareGen) return; // closed or reopened meanwhile
  renderLinkList(listed);
  const { links, note } = summarize(results);
  if (client.role === 'read') delete links.edit; // a read-only viewer never hands out edit links
  shareLinks = links;
  for (const role of ROLES) {
    const b = shareItems[role];
    b.hidden = !links[role];
    b.title = links[role] ? expiryText(links[role].expires) : '';
  }
  setShareNote(note);
  shareMenu.dataset.state = 'ready';
}

// Links minted for this page, reused while valid, so that opening the menu again
// does not record more links than anyone copies.
const minted = {};
async function mintedLink(role) {
  const have = minted[role];
  if (have && (have.expires === null || have.expires * 1000 > Date.now() + 60000)) return have;
  const r = await mintLink({ doc: docName, role, token, origin: location.origin });
  if (r.ok) minted[role] = r;
  return r;
}

/** The document's active links, each with "Revoke" (the list is the server's: GET /api/docs/{doc}/links). */
function renderLinkList(listed) {
  const box = $('share-links');
  const list = $('share-list');
  list.replaceChildren();
  const links = listed.ok ? activeLinks(listed.links) : [];
  box.hidden = links.length === 0;
  for (const link of links) {
    const li = document.createElement('li');
    li.dataset.id = link.id;
    const label = document.createElement('span');
    label.className = 'share-link-label';
    label.textContent = linkLabel(link);
    label.title = linkDetails(link);
    const btn = document.createElement('button');
    btn.type = 'button';
    btn.className = 'share-revoke';
    btn.textContent = 'Revoke';
    btn.title = 'Revoke this link: whoever uses it is disconnected now, and it opens nothing any more';
    btn.addEventListener('click', async () => {
      btn.disabled = true;
      const r = await revokeLink({ id: link.id, token });
      if (!r.ok) {
        btn.disabled = false;
        setShareNote(`Could not revoke the link${r.message ? `: ${r.message}` : ` (HTTP ${r.status})`}.`);
        return;
      }
      for (const role of ROLES) if (minted[role] && minted[role].id === link.id) delete minted[role];
      toast('Link revoked');
      refreshShareMenu();
    });
    li.append(label, btn);
    list.append(li);
  }
}

/** Put `href` on the clipboard, or, where the browser refuses, show it in a
 * selected text field in the menu for the user to copy. */
async function copyLink(href, role) {
  let ok = false;
  if (navigator.clipboard && typeof navigator.clipboard.writeText === 'function') {
    try {
      await navigator.clipboard.writeText(href);
      ok = true;
    } catch (e) {
      ok = false;
    }
  }
  if (ok) {
    closeShareMenu();
    toast(copiedText(role));
    return;
  }
  const field = $('share-field');
  field.value = href;
  showShareMenu();
  $('share-fallback').hidden = false;
  field.focus();
  field.select();
  let copied = false;
  try { copied = document.execCommand('copy'); } catch (e) { copied = false; }
  $('share-fallback').querySelector('label').textContent = copied
    ? `${copiedText(role)}:` : 'Copy this link (Ctrl+C, or press and hold):';
  if (copied) toast(copiedText(role));
}

shareBtn.addEventListener('click', (e) => {
  e.stopPropagation();
  if (!token) {
    copyLink(new URL(`/d/${encodeURIComponent(docName)}`, location.origin).href, null);
    return;
  }
  if (!shareMenu.hidden) {
    closeShareMenu();
    return;
  }
  showShareMenu();
  refreshShareMenu();
});
shareMenu.addEventListener('click', (e) => e.stopPropagation());
for (const role of ROLES) {
  shareItems[role].addEventListener('click', () => {
    const link = shareLinks[role];
    if (link) copyLink(link.href, role);
  });
}
$('share-field').addEventListener('focus', (e) => e.target.select());
client.on('role', (role) => {
  if (role === 'read') {
    delete shareLinks.edit;
    shareItems.edit.hidden = true;
  }
});

const downloadMenu = $('download-menu');
const downloadBtn = $('download-btn');
downloadBtn.addEventListener('click', (e) => {
  e.stopPropagation();
  closeShareMenu();
  downloadMenu.hidden = !downloadMenu.hidden;
  downloadBtn.setAttribute('aria-expanded', String(!downloadMenu.hidden));
});
function closeMenus() {
  downloadMenu.hidden = true;
  downloadBtn.setAttribute('aria-expanded', 'false');
  if (!shareMenu.hidden) closeShareMenu();
}
document.addEventListener('click', closeMenus);
document.addEventListener('keydown', (e) => {
  if (e.key !== 'Escape' || (shareMenu.hidden && downloadMenu.hidden)) return;
  const back = shareMenu.hidden ? downloadBtn : shareBtn;
  closeMenus();
  back.focus();
});

function download(ext, type, content = view.state.doc.toString()) {
  const blob = new Blob([content], { type: `${type};charset=utf-8` });
  const url = URL.createObjectURL(blob);
  const a = el('a');
  a.href = url;
  a.download = `${docName}.${ext}`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
$('download-md').addEventListener('click', () => download('md', 'text/markdown'));
$('download-txt').addEventListener('click', () => download('txt', 'text/plain'));
$('download-html').addEventListener('click', async () => {
  const m = await loadPreview();
  download('html', 'text/html', m.standaloneHtml(docName, view.state.doc.toString()));
});

// ---- your name ----------------------------------------------------------------------
function renderMe() {
  $('me-name').textContent = user.name;
  const av = $('me-avatar');
  av.textContent = initials(user.name);
  av.style.setProperty('--peer', user.color);
  $('me').title = `You are "${user.name}". Click to change.`;
  renderPeople(peerInfoMap());
}

const dialog = $('name-dialog');
let chosenColor = user.color;
function renderSwatches() {
  const box = $('swatches');
  box.replaceChildren();
  for (const c of PALETTE) {
    const b = el('button', 'swatch');
    b.type = 'button';
    b.style.setProperty('--peer', c);
    b.setAttribute('role', 'radio');
    b.setAttribute('aria-checked', String(c === chosenColor));
    b.setAttribute('aria-label', c);
    b.addEventListener('click', () => { chosenColor = c; renderSwatches(); });
    box.appendChild(b);
  }
}
$('me').addEventListener('click', () => {
  $('name-input').value = user.name;
  chosenColor = user.color;
  renderSwatches();
  if (typeof dialog.showModal === 'function') dialog.showModal();
  $('name-input').select();
});
$('name-cancel').addEventListener('click', () => dialog.close());
$('name-form').addEventListener('submit', () => {
  const name = $('name-input').value.trim().slice(0, 64);
  if (!name) return;
  user = { name, color: safeColor(chosenColor, name) };
  saveUser(user);
  client.setUser(user);
  renderMe();
});

// ---- access refused ---------------------------------------------------------------------
/** The session ended for good (no access, invalid name): say why, with what
 * to do next, and take away what cannot work any more. Text already in the
 * page stays and can still be downloaded. */
/** The close reason of a renamed document, before its new name. */
const RENAMED = 'document renamed to ';

function showDenied(detail) {
  let text = detail;
  const code = session.fatalCode;
  if (code === CLOSE_CODES.BAD_TOKEN) {
    if (!token) {
      text = 'Access denied: this server needs a link that carries access (a token). Ask the document\'s owner for a link.';
    } else {
      text = deniedText(session.fatalReason, tokenClaims(token));
    }
  } else if (code === CLOSE_CODES.NOT_ALLOWED) {
    text = 'Access denied: this link does not give access to this document. Ask for a link to it.';
  } else if (code === CLOSE_CODES.NO_DOCUMENT && session.fatalReason.startsWith(RENAMED)) {
    const next = session.fatalReason.slice(RENAMED.length);
    if (DOC_NAME_RE.test(next)) {
      // Everything sent was acknowledged before the server moved the document: reopen it under its new name.
      leaveFor(`/d/${encodeURIComponent(next)}${location.search}${location.hash}`);
      text = `This document was renamed to ${next}: opening it there…`;
    }
  } else if (code === CLOSE_CODES.NO_DOCUMENT && /deleted/.test(session.fatalReason)) {
    text = 'This document was deleted: it is in the trash, and whoever may edit it can restore it (collab restore).';
  }
  showBanner(text);
  document.body.classList.add('denied');
  const empty = view.state.doc.length === 0;
  view.dispatch({
    effects: [
      hint.reconfigure(placeholder(empty ? 'Nothing to show: no access to this document.' : '')),
      editable.reconfigure([EditorState.readOnly.of(true), EditorView.editable.of(false)]),
    ],
  });
  closeMenus();
  docActions.lock();
  shareBtn.disabled = true;
  shareBtn.title = 'No access: nothing to share';
  historyPanel.toggle(false);
  $('history-btn').disabled = true; // the server would refuse its questions now
  $('authors-btn').disabled = true;
  downloadBtn.disabled = empty;
  updateUndoButtons(view.state);
}

// ---- edit / split / view ----------------------------------------------------------------
// The preview code (Markdown renderer, sanitizer, code highlighter) is a
// separate chunk, loaded the first time the rendered view or the HTML
// export is wanted.
const MODES = ['edit', 'split', 'view'];
let mode = 'edit';
let previewModule = null;

function loadPreview() {
  if (!previewModule) {
    previewModule = import('./preview.js').then((m) => {
      preview = new m.Preview({ view, scroller: $('preview-scroll'), body: $('preview-body'), note: $('preview-note') });
      return m;
    });
  }
  return previewModule;
}

async function setMode(m) {
  if (!MODES.includes(m)) return;
  mode = m;
  document.body.dataset.mode = m;
  for (const x of MODES) $(`mode-${x}`).setAttribute('aria-pressed', String(x === m));
  $('preview').hidden = m === 'edit';
  $('editor').hidden = m === 'view';
  if (m !== 'view') view.requestMeasure();
  if (m === 'edit') {
    if (preview) preview.setMode(false, false);
    return;
  }
  await loadPreview();
  if (mode === m) preview.setMode(true, m === 'split');
}
for (const m of MODES) $(`mode-${m}`).addEventListener('click', () => setMode(m));

// ---- history ------------------------------------------------------------------------------
const historyPanel = new HistoryPanel({
  view, client, docName, token, toast,
  onRestore(phase, rev) {
    // 'start' before the request; 'done' with the restore's revision, or 'failed'.
    if (phase === 'start') Object.assign(restoring, { active: true, rev: null });
    else if (phase === 'failed' || client.rev >= rev) restoring.active = false;
    else restoring.rev = rev;
  },
  extensions: [boundedMarkdown, syntaxHighlighting(mdHighlight), syntaxHighlighting(defaultHighlightStyle, { fallback: true }), theme],
  onToggle(open) {
    closeMenus();
    if (!open) {
      view.requestMeasure();
      if (mode !== 'view' && !view.state.readOnly) view.focus();
    }
  },
});
$('history-btn').addEventListener('click', (e) => { e.stopPropagation(); historyPanel.toggle(); });
window.collab.history = historyPanel;
$('authors-btn').addEventListener('click', () => authors.toggle());
window.collab.authors = authors;
window.collab.docActions = docActions;

// ---- shortcuts panel and theme ------------------------------------------------------------
const help = $('help-dialog');
function openHelp() {
  if (help.open) return;
  closeMenus();
  help.showModal();
  $('help-close').focus();
}
$('help-btn').addEventListener('click', openHelp);
$('help-close').addEventListener('click', () => help.close());
help.addEventListener('close', () => { if (mode !== 'view' && !view.state.readOnly) view.focus(); });

const typingTarget = (t) => t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));
document.addEventListener('keydown', (e) => {
  if (e.defaultPrevented) return;
  if (e.ctrlKey && e.altKey && !e.shiftKey && !e.metaKey && ['1', '2', '3'].includes(e.key)) {
    e.preventDefault();
    setMode(MODES[Number(e.key) - 1]);
  } else if (e.ctrlKey && e.altKey && !e.shiftKey && !e.metaKey && e.code === 'KeyH') {
    e.preventDefault();
    historyPanel.toggle();
  } else if (e.ctrlKey && e.altKey && !e.shiftKey && !e.metaKey && e.code === 'KeyA') {
    e.preventDefault();
    authors.toggle();
  } else if (e.key === 'Escape' && historyPanel.open && !help.open) {
    e.preventDefault();
    historyPanel.toggle(false);
  } else if (e.key === '?' && !e.ctrlKey && !e.altKey && !e.metaKey && !typingTarget(e.target)) {
    e.preventDefault();
    openHelp();
  } else if (e.key === 'F1') {
    e.preventDefault();
    openHelp();
  }
});

function renderTheme() {
  const t = themeChoice();
  $('theme-btn').textContent = `Theme: ${t}`;
  $('theme-btn').title = t === 'auto' ? 'Colour theme: follows the system. Click for light.' : `Colour theme: ${t}. Click to change.`;
}
$('theme-btn').addEventListener('click', () => {
  applyTheme(nextTheme(themeChoice()));
  renderTheme();
});

// ---- go ------------------------------------------------------------------------------
renderMe();
renderTheme();
renderStatus();
scheduleCounts();
updateUndoButtons(view.state);
if (!DOC_NAME_RE.test(docName)) {
  showBanner('This is not a valid document name: use 1-128 letters, digits, ".", "_" or "-".');
} else {
  session.start();
}
