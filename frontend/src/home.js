// The home page (/): the documents that exist, a button for a new document
// with a fresh random name, and a field to open one by name.

import { apiUrl, pageUrl, pageToken, randomDocName, DOC_NAME_RE, el, applyTheme } from './common.js';

applyTheme();

const $ = (id) => document.getElementById(id);

// The list's `size` is the document's length in characters (code points),
// not bytes: shown as a count ("1.6K", "2M"), the exact number in the tooltip.
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

async function loadDocs() {
  const status = $('docs-status');
  try {
    const res = await fetch(apiUrl('/api/docs'), { headers: { Accept: 'application/json' } });
    if (res.status === 401 || res.status === 403) {
      noAccess(res.status);
      return;
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    let docs = await res.json();
    if (docs && !Array.isArray(docs) && Array.isArray(docs.docs)) docs = docs.docs;
    docs = (docs || []).filter((d) => d && typeof d.id === 'string');
    docs.sort((a, b) => (parseTime(b.updated)?.getTime() || 0) - (parseTime(a.updated)?.getTime() || 0) || a.id.localeCompare(b.id));
    const rows = $('doc-rows');
    rows.replaceChildren();
    for (const d of docs) {
      const tr = el('tr');
      const title = typeof d.title === 'string' && d.title ? d.title : null;
      tr.dataset.search = searchKey(`${title || ''}\n${d.id}`);
      const first = el('td', 'doc-title');
      const a = el('a', title ? '' : 'untitled', title || d.id); // textContent: names and titles are data, never markup
      a.href = pageUrl(d.id);
      first.appendChild(a);
      tr.appendChild(first);
      tr.appendChild(el('td', 'muted doc-id', d.id));
      const size = el('td', 'num', typeof d.size === 'number' ? formatChars(d.size) : '');
      if (typeof d.size === 'number') size.title = `${d.size.toLocaleString()} character${d.size === 1 ? '' : 's'}`;
      tr.appendChild(size);
      tr.appendChild(el('td', 'num', typeof d.rev === 'number' ? d.rev.toLocaleString() : ''));
      const when = parseTime(d.updated);
      const td = el('td', 'muted', relativeTime(when));
      if (when) td.title = when.toLocaleString();
      tr.appendChild(td);
      rows.appendChild(tr);
    }
    $('doc-table').hidden = docs.length === 0;
    $('doc-search').hidden = docs.length === 0;
    applySearch();
    $('doc-count').textContent = docs.length ? String(docs.length) : '';
    status.hidden = docs.length > 0;
    status.textContent = 'No documents yet. Create one to get started.';
  } catch (e) {
    status.hidden = false;
    status.textContent = `Could not load the document list (${e.message}).`;
  }
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
  const note = $('search-status');
  note.hidden = !words.length || shown > 0;
  note.textContent = 'No document matches the search.';
  $('doc-count').textContent = rows.length ? (words.length ? `${shown} of ${rows.length}` : String(rows.length)) : '';
}

$('doc-search').addEventListener('input', applySearch);

/** The server wants a token this page does not have (or refuses it): there
 * is nothing to list or create from here, so say how to get in instead of
 * offering buttons that cannot work. */
function noAccess(status) {
  const hadToken = !!pageToken();
  $('new-doc').hidden = true;
  $('open-form').hidden = true;
  $('doc-list-section').hidden = true;
  const note = $('access-note');
  note.hidden = false;
  note.textContent = hadToken
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

loadDocs();
