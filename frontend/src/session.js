// The transport: one WebSocket at a time to /ws/{doc}, reconnecting with
// exponential backoff and jitter, feeding a SyncClient. No DOM: the
// WebSocket class, timers and randomness are injectable for tests; the page
// calls online()/offline() from the browser's events.

import { CLOSE_CODES } from './protocol.js';

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
   * @param {object} [opts.timing] {base, max, ackTimeout, joinTimeout, retry} in ms
   */
  constructor({ url, client, WebSocket = globalThis.WebSocket, random = Math.random, timing = {} }) {
    this.url = url;
    this.client = client;
    this.WebSocket = WebSocket;
    this.random = random;
    this.timing = { base: 500, max: 15000, ackTimeout: 15000, joinTimeout: 10000, retry: 1000, ...timing };
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.watchdog = null;
    this.status = 'connecting'; // connecting | connected | reconnecting | offline | closed
    this.fatal = null;
    this.fatalCode = null; // the close code that ended the session for good
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
    clearInterval(this.watchdog);
    this._drop();
  }

  /** The browser says the network is gone: stop trying until it is back. */
  offline() {
    this.isOffline = true;
    clearTimeout(this.timer);
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
    if (this.stopped || this.fatal) return;
    this._setStatus(this.attempt === 0 && this.client.rev === null ? 'connecting' : 'reconnecting');
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (e) {
      this._schedule();
      return;
    }
    this.ws = ws;
    this.openedAt = Date.now();
    ws.onopen = () => {
      if (this.ws !== ws) return;
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
        this._setStatus('closed', fatal);
        return;
      }
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
