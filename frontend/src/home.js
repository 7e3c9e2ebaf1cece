// The home page (/): the documents that exist (each with Rename and Move to
// trash for whoever may edit it), the Trash with Restore, a button for a new
// document with a fresh random name, and a field to open one by name.

import { pageUrl, pageToken, randomDocName, DOC_NAME_RE, el, applyTheme } from './common.js';
import { listDocs, listTrash, restoreDoc, failureText, formatBytes, purgeText } from './docapi.js';
import { renameDialog, trashDialog } from './docdialogs.js';

applyTheme();

const $ = (id) => document.getElementById(id);
const token = pageToken();

// Where the size in bytes is not known yet (a document not edited since the
// server learned to count them), the size in characters, labelled so.
const compact = new Intl.NumberFormat('en', { notation: 'compact', maximumFractionDigits: 1 });
function formatChars(n) {
  return n < 10000 ? n.toLocaleString() : compact.format(n);
}

function parseTime(t) {
  if (t == null) return null;
  if (typeof t === 'number') return new Date(t < 1e12 ? t * 1000 : t);
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

function relativeTime(d) {
  if (!d) return '';
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  if (s < 45) return 'just now';
  const units = [['minute', 60], ['hour', 3600], ['day', 86400], ['month', 2592000], ['year', 31536000]];
  let unit = units[0];
  for (const u of units) if (s >= u[1]) unit = u;
  const n = Math.max(1, Math.round(s / unit[1]));
  return `${n} ${unit[0]}${n === 1 ? '' : 's'} ago`;
}

const titleOf = (d) => (typeof d.title === 'string' && d.title ? d.title : null);

/** The cells every row starts with: title (a link, or plain text in the trash), name, size. */
function leadingCells(tr, d, link) {
  const title = titleOf(d);
  const first = el('td', 'doc-title');
  // textContent: names and titles are data, never markup
  const label = el(link ? 'a' : 'span', title ? '' : 'untitled', title || d.id);
  if (link) label.href = pageUrl(d.id);
  first.appendChild(label);
  tr.appendChild(first);
  tr.appendChild(el('td', 'muted doc-id', d.id));
  tr.appendChild(sizeCell(d));
}

/** The size in bytes of UTF-8 ("2.0 MB"), the exact counts in the tooltip. */
function sizeCell(d) {
  const chars = typeof d.size === 'number' ? d.size : null;
  const charText = chars === null ? '' : `${chars.toLocaleString()} character${chars === 1 ? '' : 's'}`;
  if (typeof d.bytes === 'number') {
    const td = el('td', 'num doc-size', formatBytes(d.bytes));
    td.title = `${d.bytes.toLocaleString()} byte${d.bytes === 1 ? '' : 's'} (UTF-8)${charText ? `, ${charText}` : ''}`;
    return td;
  }
  const td = el('td', 'num doc-size', chars === null ? '' : `${formatChars(chars)} chars`);
  if (chars !== null) td.title = `${charText} (the size in bytes is counted from its next edit)`;
  return td;
}

function timeCell(t, className = 'muted') {
  const when = parseTime(t);
  const td = el('td', className, relativeTime(when));
  if (when) td.title = when.toLocaleString();
  return td;
}

function actionButton(text, className, title, onClick) {
  const b = el('button', `row-btn ${className}`, text);
  b.type = 'button';
  b.title = title;
  b.addEventListener('click', onClick);
  return b;
}

// ---- documents ----------------------------------------------------------------------

async function loadDocs() {
  const status = $('docs-status');
  const r = await listDocs({ token });
  if (!r.ok && (r.status === 401 || r.status === 403)) {
    noAccess(r.status);
    return;
  }
  if (!r.ok || !Array.isArray(r.body)) {
    status.hidden = false;
    status.textContent = `Could not load the document list (${r.status ? `HTTP ${r.status}` : r.message}). Reload the page to try again.`;
    return;
  }
  const docs = r.body.filter((d) => d && typeof d.id === 'string');
  docs.sort((a, b) => (parseTime(b.updated)?.getTime() || 0) - (parseTime(a.updated)?.getTime() || 0) || a.id.localeCompare(b.id));
  const rows = $('doc-rows');
  rows.replaceChildren();
  for (const d of docs) rows.appendChild(docRow(d));
  $('doc-table').hidden = docs.length === 0;
  $('doc-search').hidden = docs.length === 0 || view === 'trash';
  applySearch();
  status.hidden = docs.length > 0;
  status.textContent = 'No documents yet. Create one to get started.';
}

function docRow(d) {
  const tr = el('tr');
  tr.dataset.id = d.id;
  tr.dataset.search = searchKey(`${titleOf(d) || ''}\n${d.id}`);
  leadingCells(tr, d, true);
  tr.appendChild(el('td', 'num', typeof d.rev === 'number' ? d.rev.toLocaleString() : ''));
  tr.appendChild(timeCell(d.updated));
  const actions = el('td', 'actions');
  if (d.role === 'edit') { // what the server says this token may do: a read-only viewer gets no buttons
    const name = titleOf(d) || d.id;
    actions.append(
      actionButton('Rename', 'row-rename', `Rename ${name}`, async () => {
        const renamed = await renameDialog({ doc: d.id, title: titleOf(d), token });
        if (renamed) {
          note(`Renamed ${d.id} to ${renamed}; its old address leads there.`);
          loadDocs();
        }
      }),
      actionButton('Move to trash', 'row-trash', `Move ${name} to the trash`, async () => {
        const done = await trashDialog({ doc: d.id, title: titleOf(d), token });
        if (done) {
          note(`Moved ${name} to the trash${typeof done.purge_at === 'number' ? ` (${purgeText(done.purge_at)})` : ''}.`,
            () => restore(d.id, name));
          loadDocs();
        }
      }),
    );
  }
  tr.appendChild(actions);
  return tr;
}

/** Lower-cased, accents kept apart (NFKD without marks), so "fuchse" finds "Füchse". */
export function searchKey(text) {
  return text.normalize('NFKD').replace(/\p{M}/gu, '').toLowerCase();
}

/** Show only the rows whose title or name holds every word of the search field. */
function applySearch() {
  const words = searchKey($('doc-search').value).split(/\s+/).filter(Boolean);
  let shown = 0;
  const rows = $('doc-rows').children;
  for (const tr of rows) {
    const hit = words.every((w) => tr.dataset.search.includes(w));
    tr.hidden = !hit;
    if (hit) shown++;
  }
  const info = $('search-status');
  info.hidden = !words.length || shown > 0;
  info.textContent = 'No document matches the search.';
  if (view === 'docs') {
    $('doc-count').textContent = rows.length ? (words.length ? `${shown} of ${rows.length}` : String(rows.length)) : '';
  }
}

$('doc-search').addEventListener('input', applySearch);

// ---- the trash ------------------------------------------------------------------------

async function loadTrash() {
  const status = $('trash-status');
  const r = await listTrash({ token });
  if (!r.ok || !Array.isArray(r.body)) {
    status.hidden = false;
    status.textContent = failureText('list the trash', r);
    return;
  }
  const docs = r.body.filter((d) => d && typeof d.id === 'string');
  const rows = $('trash-rows');
  rows.replaceChildren();
  for (const d of docs) rows.appendChild(trashRow(d));
  $('trash-table').hidden = docs.length === 0;
  status.hidden = docs.length > 0;
  status.textContent = 'The trash is empty.';
  if (view === 'trash') $('doc-count').textContent = docs.length ? String(docs.length) : '';
}

function trashRow(d) {
  const tr = el('tr');
  tr.dataset.id = d.id;
  leadingCells(tr, d, false);
  tr.appendChild(timeCell(d.deleted));
  const purge = el('td', 'muted doc-purge', purgeText(d.purge_at));
  if (typeof d.purge_at === 'number') purge.title = `Purged for good on ${new Date(d.purge_at * 1000).toLocaleString()}`;
  tr.appendChild(purge);
  const actions = el('td', 'actions');
  if (d.role === 'edit') {
    const name = titleOf(d) || d.id;
    actions.append(actionButton('Restore', 'row-restore', `Restore ${name}: back in the list, text and history intact`,
      () => restore(d.id, name)));
  }
  tr.appendChild(actions);
  return tr;
}

async function restore(doc, name) {
  const r = await restoreDoc(doc, { token });
  if (!r.ok) {
    note(failureText(`restore ${name}`, r));
    return;
  }
  note(`Restored ${name}.`);
  await Promise.all([loadDocs(), loadTrash()]);
}

// ---- which list ----------------------------------------------------------------------------

let view = new URLSearchParams(location.search).get('view') === 'trash' ? 'trash' : 'docs';

/** Show the documents or the trash; the address says which (the token stays where it was). */
function setView(v) {
  view = v;
  const trash = v === 'trash';
  $('docs-view').hidden = trash;
  $('trash-view').hidden = !trash;
  $('docs-title').textContent = trash ? 'Trash' : 'Documents';
  $('trash-btn').textContent = trash ? 'Back to documents' : 'Trash';
  $('trash-btn').setAttribute('aria-pressed', String(trash));
  $('doc-search').hidden = trash || $('doc-rows').children.length === 0;
  const url = new URL(location.href);
  if (trash) url.searchParams.set('view', 'trash');
  else url.searchParams.delete('view');
  history.replaceState(null, '', url.href);
  if (trash) loadTrash();
  else {
    applySearch();
    loadDocs();
  }
}

$('trash-btn').addEventListener('click', () => setView(view === 'trash' ? 'docs' : 'trash'));

/** A line above the list saying what just happened, with an optional Undo. */
function note(text, undo = null) {
  $('home-note').hidden = false;
  $('home-note-text').textContent = text;
  const b = $('home-note-undo');
  b.hidden = !undo;
  b.onclick = undo;
}

// ---- access, new, open ------------------------------------------------------------------------

/** The server wants a token this page does not have (or refuses it): there
 * is nothing to list or create from here, so say how to get in instead of
 * offering buttons that cannot work. */
function noAccess(status) {
  const hadToken = !!token;
  $('new-doc').hidden = true;
  $('open-form').hidden = true;
  $('doc-list-section').hidden = true;
  const info = $('access-note');
  info.hidden = false;
  info.textContent = hadToken
    ? `This link does not give access to the document list (HTTP ${status}). Open the document link you were given, or ask for a new one.`
    : 'This server is private: open a document with the link you were given (it carries your access), '
      + 'or ask its administrator for one (collab token).';
}

$('new-doc').addEventListener('click', () => {
  location.href = pageUrl(randomDocName());
});

$('open-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const name = $('open-name').value.trim();
  const err = $('open-error');
  if (!DOC_NAME_RE.test(name)) {
    err.textContent = 'Use 1-128 letters, digits, ".", "_" or "-" (not starting with ".").';
    err.hidden = false;
    return;
  }
  err.hidden = true;
  location.href = pageUrl(name);
});

setView(view);
if (view === 'trash') loadDocs(); // for the count and the search, when going back
