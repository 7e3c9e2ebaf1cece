// The transport: one WebSocket at a time to /ws/{doc}, reconnecting with
// exponential backoff and jitter, feeding a SyncClient. No DOM: the
// WebSocket class, the health probe, timers and randomness are injectable for
// tests; the page calls online()/offline() from the browser's events.
//
// While the server cannot be reached, the backoff grows to `timing.max`
// between attempts; a cheap probe (the page asks /healthz) every
// `timing.probe` ms in between reconnects as soon as the server answers again,
// so the end of an outage is noticed within seconds, not at the next attempt.
// A server that answered and refused (overloaded, policy) is not probed: the
// backoff is what it asked for.

import { CLOSE_CODES } from './protocol.js';

// Closes that say nothing about the server refusing us: no close frame (1006,
// which the browser reports for a dropped or refused connection), going away,
// restarting.
const UNREACHABLE_CLOSE = new Set([1006, CLOSE_CODES.GOING_AWAY, CLOSE_CODES.RESTART]);

const FATAL_CLOSE = new Map([
  [CLOSE_CODES.BAD_TOKEN, 'Access denied: the link\'s token is missing or invalid.'],
  [CLOSE_CODES.NOT_ALLOWED, 'Access denied: this token is not valid for this document.'],
  [CLOSE_CODES.NO_DOCUMENT, 'No such document (the name is not valid).'],
]);

export class Session {
  /**
   * @param {object} opts
   * @param {string} opts.url  WebSocket URL
   * @param {import('./client.js').SyncClient} opts.client
   * @param {function} [opts.WebSocket]
   * @param {function} [opts.random]  Math.random replacement
   * @param {object} [opts.timing] {base, max, ackTimeout, joinTimeout, retry, probe} in ms
   * @param {function} [opts.probe]  async () => true when the server answers again (none: no probing)
   */
  constructor({ url, client, WebSocket = globalThis.WebSocket, random = Math.random, timing = {}, probe = null }) {
    this.url = url;
    this.client = client;
    this.WebSocket = WebSocket;
    this.random = random;
    this.timing = { base: 500, max: 15000, ackTimeout: 15000, joinTimeout: 10000, retry: 1000, probe: 2000, ...timing };
    this.probe = probe;
    this.probeTimer = null;
    this.unreachable = false; // the last connection ended without the server refusing it
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.watchdog = null;
    this.status = 'connecting'; // connecting | connected | reconnecting | offline | closed
    this.fatal = null;
    this.fatalCode = null; // the close code that ended the session for good
    this.fatalReason = ''; // and the server's reason with it
    this.nextRetryAt = null; // Date.now() of the next scheduled attempt, while waiting
    this.isOffline = false;
    this.stopped = false;
    this.listeners = [];
    client.on('resync', (why) => this.reconnect(why));
    // rate_limited: the op was not applied; send it again after a pause (same id).
    client.on('retry', (id) => setTimeout(() => {
      if (client.outstanding && client.outstanding.id === id) client.resend();
    }, this.timing.retry));
    this.tooLarge = null;
    client.on('too-large', (info) => { this.tooLarge = info; });
    client.on('ready', () => {
      this.attempt = 0;
      this._setStatus('connected');
    });
  }

  onStatus(fn) {
    this.listeners.push(fn);
  }

  _setStatus(s, detail = null) {
    this.status = s;
    for (const fn of this.listeners) fn(s, detail);
  }

  start() {
    this.stopped = false;
    this._connect();
    this.watchdog = setInterval(() => this._check(), 1000);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this._stopProbing();
    clearInterval(this.watchdog);
    this._drop();
  }

  /** The browser says the network is gone: stop trying until it is back. */
  offline() {
    this.isOffline = true;
    clearTimeout(this.timer);
    this._stopProbing();
    this.timer = null;
    this.nextRetryAt = null;
    this._drop();
    if (!this.fatal) this._setStatus('offline');
  }

  /** The browser says the network is back: reconnect now. */
  online() {
    if (!this.isOffline) return;
    this.isOffline = false;
    this.attempt = 0;
    if (!this.ws && !this.fatal && !this.stopped) {
      clearTimeout(this.timer);
      this._connect();
    }
  }

  /** Waiting to reconnect: try now instead of at the scheduled time (the
   * "Retry now" button, or the page becoming visible again). Nothing to do
   * while the browser says it is offline: online() reconnects then. */
  retryNow() {
    if (this.ws || this.fatal || this.stopped || this.isOffline || this.timer === null) return false;
    clearTimeout(this.timer);
    this.timer = null;
    this.nextRetryAt = null;
    this._connect();
    return true;
  }

  /** Drop the current connection (if any) and connect again soon. */
  reconnect(why) {
    if (why && globalThis.console) console.warn('collab: reconnecting:', why);
    this._drop();
    this._schedule();
  }

  _connect() {
    this.timer = null;
    this.nextRetryAt = null;
    this._stopProbing();
    if (this.stopped || this.fatal) return;
    this._setStatus(this.attempt === 0 && this.client.rev === null ? 'connecting' : 'reconnecting');
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (e) {
      this.unreachable = true;
      this._schedule();
      return;
    }
    this.ws = ws;
    this.openedAt = Date.now();
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.client.connected((msg) => {
        if (this.ws === ws && ws.readyState === 1) ws.send(JSON.stringify(msg));
      });
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      try {
        this.client.receive(msg);
      } catch (e) {
        // A bug or a broken server message must not wedge the page: start over.
        if (globalThis.console) console.error('collab: error handling message', msg, e);
        this.reconnect('client error');
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.tooLarge = null;
      this.client.disconnected(ev.code);
      const fatal = FATAL_CLOSE.get(ev.code);
      if (fatal) {
        this.fatal = fatal;
        this.fatalCode = ev.code;
        this.fatalReason = ev.reason || ''; // e.g. 'this link was revoked: ask for a new one'
        this._setStatus('closed', fatal);
        return;
      }
      // Gone without a word (never opened, dropped, the server going away or restarting): worth probing.
      this.unreachable = !opened || UNREACHABLE_CLOSE.has(ev.code);
      if (ev.code === CLOSE_CODES.POLICY || ev.code === CLOSE_CODES.OVERLOADED) this.attempt = Math.max(this.attempt, 4);
      // Closed for size with nothing left to shrink: do not hammer the server.
      if (this.tooLarge && this.tooLarge.stuck) this.attempt = Math.max(this.attempt, 4);
      this._schedule();
    };
    ws.onerror = () => {};
  }

  _drop() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close();
    } catch (e) {
      /* already closed */
    }
    this.client.disconnected();
  }

  /** Exponential backoff with jitter ("equal jitter": half fixed, half random). */
  nextDelay() {
    const exp = Math.min(this.timing.max, this.timing.base * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 20);
    return exp / 2 + this.random() * (exp / 2);
  }

  _schedule() {
    if (this.stopped || this.fatal) return;
    clearTimeout(this.timer);
    if (this.isOffline) {
      this._setStatus('offline');
      return;
    }
    const delay = this.nextDelay();
    this.nextRetryAt = Date.now() + delay;
    this.timer = setTimeout(() => this._connect(), delay);
    this._setStatus('reconnecting');
    this._probeLater();
  }

  /** While a long wait for the next attempt runs, ask the probe again after
   * about `timing.probe` ms (jittered, so that many pages do not ask at once). */
  _probeLater() {
    this._stopProbing();
    if (!this.probe || !this.unreachable || this.timer === null) return;
    const gap = this.timing.probe * (0.5 + this.random() * 0.5);
    if (this.nextRetryAt - Date.now() <= gap) return; // the attempt itself comes first
    this.probeTimer = setTimeout(() => this._probeNow(), gap);
  }

  async _probeNow() {
    this.probeTimer = null;
    let back = false;
    try {
      back = await this.probe();
    } catch (e) {
      back = false;
    }
    if (this.timer === null || this.ws) return; // connected or stopped meanwhile
    if (back) this.retryNow();
    else this._probeLater();
  }

  _stopProbing() {
    clearTimeout(this.probeTimer);
    this.probeTimer = null;
  }

  /** Watchdog: a connection that never welcomes us or never acknowledges
   * an edit is dead even if the socket does not know it yet. */
  _check() {
    if (!this.ws) return;
    const now = Date.now();
    const c = this.client;
    if (!c.ready && now - this.openedAt > this.timing.joinTimeout) {
      this.reconnect('no welcome');
    } else if (c.outstanding && c.send && now - c.outstanding.sentAt > this.timing.ackTimeout) {
      this.reconnect('no ack');
    }
  }
}
