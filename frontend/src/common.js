// Shared by both pages: the access token from the page URL, API and
// WebSocket URLs, the local user's identity (name and colour, kept in
// localStorage), and document names.

export { DOC_NAME_RE } from './protocol.js';

/** Where the page URL carries the access token: `?token=` (query) or
 * `#token=` (fragment: share links use it, since browsers never send a
 * fragment to servers or in Referer). Returns {token, where} or null. */
function tokenSource() {
  const q = new URLSearchParams(location.search).get('token');
  if (q) return { token: q, where: 'query' };
  const h = new URLSearchParams(location.hash.replace(/^#/, '')).get('token');
  if (h) return { token: h, where: 'fragment' };
  return null;
}

/** The access token of the page URL, passed on to every API and WebSocket call. */
export function pageToken() {
  const t = tokenSource();
  return t ? t.token : null;
}

function withToken(url) {
  const t = pageToken();
  if (!t) return url;
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(t)}`;
}

export function apiUrl(path) {
  return withToken(path);
}

/** Link to a document page, carrying the token the way this page got it. */
export function pageUrl(doc) {
  const path = `/d/${encodeURIComponent(doc)}`;
  const t = tokenSource();
  if (t && t.where === 'fragment') return `${path}#token=${encodeURIComponent(t.token)}`;
  return withToken(path);
}

let leaving = false;

/** Replace this page with `url`, once: a second call (the rename's answer and the server's close
 * both move the page) would abort the navigation already under way. */
export function leaveFor(url) {
  if (leaving) return;
  leaving = true;
  location.replace(url);
}

/** The home page (`view` "trash": its Trash), carrying the token the way this page got it. */
export function homeUrl(view = null) {
  const query = view ? `?view=${encodeURIComponent(view)}` : '';
  const t = tokenSource();
  if (t && t.where === 'fragment') return `/${query}#token=${encodeURIComponent(t.token)}`;
  return withToken(`/${query}`);
}

export function wsUrl(doc) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return withToken(`${scheme}://${location.host}/ws/${encodeURIComponent(doc)}`);
}

export const PALETTE = [
  '#e03131', '#1971c2', '#2f9e44', '#9c36b5', '#e8590c', '#0c8599',
  '#c2255c', '#4263eb', '#5c940d', '#f08c00', '#6741d9', '#1098ad',
];

const ADJECTIVES = ['Amber', 'Brave', 'Calm', 'Clever', 'Curious', 'Gentle', 'Happy', 'Jolly', 'Lucky', 'Merry', 'Nimble', 'Quiet', 'Swift', 'Sunny', 'Witty', 'Bold'];
const ANIMALS = ['Otter', 'Falcon', 'Panda', 'Fox', 'Heron', 'Lynx', 'Badger', 'Koala', 'Puffin', 'Marten', 'Ibex', 'Wombat', 'Gecko', 'Robin', 'Seal', 'Moose'];

function randomInt(n) {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return a[0] % n;
}

const pick = (arr) => arr[randomInt(arr.length)];

/** A colour we are willing to put into a style: #rgb / #rrggbb only. */
export function safeColor(c, fallbackKey = '') {
  if (typeof c === 'string' && /^#[0-9a-fA-F]{6}$/.test(c)) return c;
  if (typeof c === 'string' && /^#[0-9a-fA-F]{3}$/.test(c)) return `#${c[1]}${c[1]}${c[2]}${c[2]}${c[3]}${c[3]}`;
  let h = 0;
  for (const ch of String(fallbackKey)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

const USER_KEY = 'collab.user';

/** The local user's {name, color}; created (and remembered) on first use. */
export function loadUser() {
  let user = null;
  try {
    user = JSON.parse(localStorage.getItem(USER_KEY) || 'null');
  } catch (e) {
    user = null;
  }
  if (!user || typeof user.name !== 'string' || !user.name.trim()) {
    user = { name: `${pick(ADJECTIVES)} ${pick(ANIMALS)}`, color: pick(PALETTE) };
    saveUser(user);
  }
  user.name = user.name.slice(0, 64);
  user.color = safeColor(user.color, user.name);
  return user;
}

export function saveUser(user) {
  try {
    localStorage.setItem(USER_KEY, JSON.stringify(user));
  } catch (e) {
    /* private mode: keep it for this page only */
  }
}

/** A fresh random document name like "swift-otter-7k3q". */
export function randomDocName() {
  const alphabet = 'abcdefghijkmnopqrstuvwxyz23456789';
  let tail = '';
  for (let i = 0; i < 6; i++) tail += alphabet[randomInt(alphabet.length)];
  return `${pick(ADJECTIVES).toLowerCase()}-${pick(ANIMALS).toLowerCase()}-${tail}`;
}

/** Initials for an avatar. */
export function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const chars = parts.slice(0, 2).map((p) => Array.from(p)[0]);
  return (chars.join('') || '?').toUpperCase();
}

/** Create an element with a class and text (never HTML). */
export function el(tag, className = '', text = null) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== null) e.textContent = text;
  return e;
}

// ---- colour theme ------------------------------------------------------------
// "auto" follows the system (prefers-color-scheme); "light" and "dark" are
// the user's choice, remembered in this browser. style.css reads
// <html data-theme>.
const THEME_KEY = 'collab.theme';
const THEMES = ['auto', 'light', 'dark'];

export function themeChoice() {
  let t = null;
  try {
    t = localStorage.getItem(THEME_KEY);
  } catch (e) {
    t = null;
  }
  return THEMES.includes(t) ? t : 'auto';
}

export function nextTheme(t) {
  return THEMES[(THEMES.indexOf(t) + 1) % THEMES.length];
}

/** Apply (and remember) a theme choice; with no argument, the remembered one. */
export function applyTheme(t = themeChoice()) {
  if (t === 'auto') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  try {
    if (t === 'auto') localStorage.removeItem(THEME_KEY);
    else localStorage.setItem(THEME_KEY, t);
  } catch (e) {
    /* private mode: for this page only */
  }
}
