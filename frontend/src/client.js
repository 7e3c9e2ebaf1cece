// The OT client: the state machine that keeps one editor in sync with the
// server over the collab wire protocol (docs/protocol.md). Pure module: no DOM, no sockets. The transport
// (session.js) feeds it server messages with receive() and gives it a send
// function with connected(); the editor feeds it local edits with
// localEdit() and receives remote edits through editor.applyRemote().
//
// States (ot.js naming):
//   synchronized         outstanding == null, buffer == null
//   awaiting confirm     outstanding != null, buffer == null
//   awaiting with buffer outstanding != null, buffer != null
// While disconnected, local edits collect in `buffer` (they have no id yet);
// an `outstanding` op keeps its id across reconnects, so the server can
// recognize a resend (idempotent submit).
//
// All positions and operations here are in Unicode code points, the
// protocol's unit. The editor converts to and from its UTF-16 offsets.
//
// Message size: an `op` message whose JSON would exceed the message size
// limit (the server's `welcome.max_message_bytes`, else a conservative
// 1 MiB) is sent as several consecutive ops, each under the limit: the
// first goes out, the rest stays in `buffer` and follows on each ack, so a
// huge paste never becomes a frame the server closes with 1009. If a
// connection is nevertheless closed for size (1009, or an abnormal close
// twice for the same large op), the limit is halved, the refused op (never
// applied: its frame was refused) goes back to the buffer and is sent again
// in smaller pieces, with new ids. Nothing is discarded.
//
// No timers and no clock decide anything here: a `rate_limited` op is
// announced with a 'retry' event and sent again by resend() (the session
// waits first), so tests/conformance/client.json can replay transcripts
// against this class and against the Python client (collab/clientstate.py).

import { apply, compose, transform, transformCursor, isNoop, invert, validate, targetLength, cpLength } from './ot.js';
import { diffOp } from './diff.js';
import { splitOp, jsonBytes } from './split.js';
import { CLOSE_CODES, CLOSE_ABNORMAL, ERROR_CODES } from './protocol.js';

const HISTORY_KEEP = 200;
/** Operations queued on serverText before they are applied to it. */
const SERVER_OPS_KEEP = 500;

/** Message size used when the server does not say (bytes of JSON, UTF-8). */
export const DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024;
/** Never split below this, whatever closes we see. */
export const MIN_MESSAGE_BYTES = 1024;
/** Slack for digits that grow when an op is transformed and resent. */
const SIZE_SLACK = 64;
/** An abnormal close after sending an op this large may be a refusal for size. */
const SUSPECT_BYTES = MIN_MESSAGE_BYTES;

function defaultId() {
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === 'function') {
    return globalThis.crypto.randomUUID();
  }
  // Fallback for non-secure contexts (plain http on a LAN address), where
  // randomUUID is unavailable: 128 random bits from getRandomValues.
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

const sameCursor = (a, b) => (a === b) || (!!a && !!b && a.anchor === b.anchor && a.head === b.head);

export class SyncClient {
  /**
   * @param {object} opts
   * @param {object} opts.editor  {applyRemote(op, meta), getCursor() -> cursor|null}; `meta` is
   *   `{client, id, rev}` for another client's operation, absent for a rebase or an undone refusal
   * @param {object} [opts.user]  {name, color}
   * @param {function} [opts.newId]  operation id generator
   * @param {number} [opts.maxMessageBytes]  limit used when the server does not announce one
   * @param {number} [opts.forceMaxMessageBytes]  limit used whatever the server announces (debugging, tests)
   */
  constructor({ editor, user = null, newId = defaultId, maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES,
    forceMaxMessageBytes = null } = {}) {
    this.editor = editor;
    this.user = user;
    this.newId = newId;
    this.clientLimit = maxMessageBytes;
    this.forcedLimit = forceMaxMessageBytes;
    this.serverLimit = null; // welcome.max_message_bytes, when the server sends it
    this.learnedLimit = Infinity; // lowered by connections closed for size
    this.conn = 0; // connection counter, to know on which connection an op was sent
    this.listeners = new Map();

    this.rev = null; // last server revision applied locally; null before the first welcome
    this.serverText = ''; // the document at `rev`, as the server has it (see the accessors below)
    this.outstanding = null; // {op, id, rev, cursor, sentAt}: sent, not yet acknowledged
    this.buffer = null; // local edits not sent yet (composed)
    this.history = []; // recent server ops [{rev, op}], to move old presence forward

    this.freshJoin = false; // join without `since` next time (the server did not know our revision)
    this.send = null; // set while a socket is open
    this.ready = false; // welcome processed on the current connection
    this.resolving = null; // {text, rev, peers, queue}: waiting to learn the fate of a resend
    this.clientId = null;
    this.role = null;
    this.peers = new Map(); // client id -> {client, user}
    this.sentCursor = null; // our cursor as the server believes it (server coordinates)
    // Counters, for debugging and tests: welcomes by kind, and resolutions
    // of a resend after a long absence.
    this.stats = {
      welcomeOps: 0, welcomeText: 0, ownOpInWelcome: 0, resendApplied: 0, resendNotApplied: 0,
      splitOps: 0, tooLargeCloses: 0, opsSent: 0, largestOpBytes: 0,
    };
  }

  /** The largest `op` message we send, in bytes of JSON (UTF-8). */
  get maxMessageBytes() {
    const base = this.forcedLimit || this.serverLimit || this.clientLimit;
    return Math.max(MIN_MESSAGE_BYTES, Math.min(base, this.learnedLimit));
  }

  // ---- events -----------------------------------------------------------

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, []);
    this.listeners.get(event).push(fn);
    return this;
  }

  emit(event, ...args) {
    for (const fn of this.listeners.get(event) || []) fn(...args);
  }

  // ---- state queries ----------------------------------------------------

  /** The document at `rev` as the server has it. Built on demand: acks and
   * remote ops only queue their operation (checked against the length at
   * once), so the common path costs the size of the edit, not of the
   * document; the text is needed only to rebase after a long absence or to
   * undo a refused edit. */
  get serverText() {
    if (this._serverOps.length) {
      let t = this._serverBase;
      for (const op of this._serverOps) t = apply(t, op);
      this._serverBase = t;
      this._serverOps = [];
    }
    return this._serverBase;
  }

  set serverText(text) {
    this._serverBase = text;
    this._serverOps = [];
    this._serverLength = cpLength(text);
  }

  /** The server applied `op` to serverText (refused, as apply() would, when it does not fit). */
  _advanceServer(op) {
    validate(op, this._serverLength);
    this._serverLength = targetLength(op);
    this._serverOps.push(op);
    if (this._serverOps.length >= SERVER_OPS_KEEP) void this.serverText;
  }

  /** True when every local edit has been acknowledged by the server. */
  get saved() {
    return !this.outstanding && !this.buffer;
  }

  /** The not-yet-acknowledged local changes, composed (relative to serverText). */
  get pending() {
    if (this.outstanding && this.buffer) return compose(this.outstanding.op, this.buffer);
    if (this.outstanding) return this.outstanding.op;
    return this.buffer;
  }

  // ---- transport hooks --------------------------------------------------

  /** A socket opened: send `join`. `send(obj)` sends one message. */
  connected(send) {
    this.conn++;
    this.send = send;
    this.ready = false;
    this.resolving = null;
    // batch: the server may coalesce what is queued for us into one frame (docs/protocol.md).
    // freshJoin: the server did not know our revision; ask for a snapshot.
    const join = { type: 'join', since: this.freshJoin ? null : this.rev, batch: true, titles: true };
    if (this.user) join.user = this.user;
    send(join);
  }

  /** The socket closed (or is being abandoned); `code` is the close code
   * when the server or the network closed it. */
  disconnected(code = null) {
    this._checkTooLarge(code);
    this.send = null;
    this.ready = false;
    this.resolving = null;
    if (this.peers.size) {
      this.peers.clear();
      this.emit('peers', this.peers);
    }
    this.emit('saved', this.saved);
  }

  /** Handle one message from the server. */
  receive(msg) {
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === 'batch') {
      if (Array.isArray(msg.messages)) for (const inner of msg.messages) this.receive(inner);
      return;
    }
    if (this.resolving && msg.type !== 'ack' && msg.type !== 'error') {
      this.resolving.queue.push(msg);
      return;
    }
    switch (msg.type) {
      case 'welcome': return this._welcome(msg);
      case 'op': return this._serverOp(msg.rev, msg.op, msg.client, msg.cursor ?? null, msg.id);
      case 'ack': return this._onAck(msg);
      case 'presence': return this._presence(msg);
      case 'join': return this._peerJoin(msg);
      case 'leave': return this._peerLeave(msg);
      case 'error': return this._error(msg);
      case 'title': return this.emit('title', typeof msg.title === 'string' ? msg.title : null);
      default: return undefined; // unknown message types are ignored (forward compatible)
    }
  }

  // ---- editor hooks -----------------------------------------------------

  /** The user changed the document: `op` relative to the current local text. */
  localEdit(op, cursor = null) {
    if (isNoop(op)) return;
    if (this.buffer) this.buffer = compose(this.buffer, op);
    else if (this.outstanding || !this.ready) this.buffer = op;
    else this._sendNew(op, cursor);
    this.emit('saved', this.saved);
  }

  /** The local selection may have changed (code points, local coordinates). */
  localCursor(cursor) {
    if (!this.ready || !this.send || !this.saved) return;
    if (sameCursor(cursor, this.sentCursor)) return;
    this.sentCursor = cursor;
    this.send({ type: 'presence', rev: this.rev, cursor });
  }

  /** Change our name/colour: announce it with a presence message. */
  setUser(user) {
    this.user = user;
    if (this.ready && this.send && this.saved) {
      this.send({ type: 'presence', rev: this.rev, cursor: this.sentCursor, user });
    }
  }

  // ---- internals --------------------------------------------------------

  _sendOp(out, cursor) {
    // sentRev/sentOp: exactly what was first sent, for the resend after a long absence.
    this.outstanding = {
      ...out, cursor, sentRev: out.rev, sentOp: out.op, sentAt: Date.now(), sends: 0, refusals: 0, suspect: 0,
    };
    if (this.send) this._transmit(this.outstanding, cursor);
  }

  /** Send the outstanding op `o` (first send or resend, same id); `probe`:
   * exactly as first sent, to learn whether it had been applied. */
  _transmit(o, cursor, probe = false) {
    const msg = { type: 'op', rev: probe ? o.sentRev : o.rev, op: probe ? o.sentOp : o.op, id: o.id, cursor };
    o.sentAt = Date.now(); // for the session's ack watchdog
    o.sentOn = this.conn;
    o.sends++;
    o.bytes = o.bytes || jsonBytes(msg);
    this.stats.opsSent++;
    this.stats.largestOpBytes = Math.max(this.stats.largestOpBytes, o.bytes);
    this.send(msg);
  }

  /** Send `op` (local changes on serverText, nothing in flight, buffer
   * empty) as a new outstanding op; if its message would be too large,
   * send its first part and keep the rest in the buffer. */
  _sendNew(op, cursor) {
    const id = this.newId();
    const overhead = jsonBytes({ type: 'op', rev: this.rev, op: [], id, cursor }) - 2 + SIZE_SLACK;
    const { head, tail, bytes } = splitOp(op, this.maxMessageBytes - overhead);
    if (tail) {
      this.stats.splitOps++;
      this.buffer = tail;
      cursor = null; // the cursor is where it will be after the whole edit
    }
    this._sendOp({ op: head, id, rev: this.rev, bytes: bytes + overhead - SIZE_SLACK }, cursor);
  }

  /** Move the buffer into flight, if nothing is in flight. */
  _flush() {
    if (this.outstanding || !this.buffer || !this.ready) return;
    const op = this.buffer;
    this.buffer = null;
    this._sendNew(op, this.editor.getCursor ? this.editor.getCursor() : null);
  }

  /** Was the connection just closed because our op was too large? If so,
   * lower the limit; the op was not applied (its frame was refused). */
  _checkTooLarge(code) {
    const o = this.outstanding;
    if (!o || !this.send || o.sentOn !== this.conn || code == null) return;
    let tooLarge = code === CLOSE_CODES.TOO_BIG;
    if (!tooLarge && code === CLOSE_ABNORMAL && o.bytes > SUSPECT_BYTES) {
      // The server may reset the connection while the browser is still
      // writing the frame it refuses, so 1009 can arrive as 1006. Twice
      // for the same op: assume the size.
      o.suspect++;
      tooLarge = o.suspect >= 2;
    }
    if (!tooLarge) return;
    o.refusals = o.sends; // a frame refused for size was not applied; count earlier suspect sends too
    this.stats.tooLargeCloses++;
    const before = this.maxMessageBytes;
    this.learnedLimit = Math.max(MIN_MESSAGE_BYTES, Math.min(before, Math.floor(o.bytes / 2)));
    this.emit('too-large', { code, bytes: o.bytes, limit: this.maxMessageBytes, stuck: before <= MIN_MESSAGE_BYTES });
  }

  /** The outstanding op is too large for the current limit. */
  _outstandingTooLarge() {
    const o = this.outstanding;
    return !!o && o.bytes > this.maxMessageBytes;
  }

  /** The outstanding op was not applied: make it unsent local changes again. */
  _unsend() {
    const o = this.outstanding;
    this.outstanding = null;
    this.buffer = this.buffer ? compose(o.op, this.buffer) : o.op;
  }

  _remember(rev, op) {
    this.history.push({ rev, op });
    if (this.history.length > HISTORY_KEEP) this.history.splice(0, this.history.length - HISTORY_KEEP);
  }

  /** A server cursor valid at `rev` -> local coordinates (or null if unknown). */
  _toLocal(cursor, rev) {
    if (!cursor || typeof cursor.anchor !== 'number' || typeof cursor.head !== 'number') return null;
    let c = cursor;
    if (rev != null && rev < this.rev) {
      const start = this.history.findIndex((h) => h.rev === rev + 1);
      if (start < 0) return null;
      for (let i = start; i < this.history.length; i++) c = transformCursor(c, this.history[i].op);
    } else if (rev != null && rev > this.rev) {
      return null;
    }
    if (this.outstanding) c = transformCursor(c, this.outstanding.op);
    if (this.buffer) c = transformCursor(c, this.buffer);
    return c;
  }

  _welcome(msg) {
    this.clientId = msg.client;
    this.freshJoin = false;
    if (Number.isInteger(msg.max_message_bytes) && msg.max_message_bytes > 0) {
      this.serverLimit = msg.max_message_bytes;
    }
    if (msg.role !== this.role) {
      this.role = msg.role;
      this.emit('role', msg.role);
    }
    const peers = Array.isArray(msg.peers) ? msg.peers : [];
    if (Array.isArray(msg.ops)) {
      this.stats.welcomeOps++;
      for (const e of msg.ops) {
        if (this.outstanding && e.id != null && e.id === this.outstanding.id) {
          this.stats.ownOpInWelcome++;
          this._ack(e.rev); // our own op made it before the connection dropped
        } else if (!this._serverOp(e.rev, e.op, e.client, null, e.id, true)) {
          return;
        }
      }
      if (this.rev !== msg.rev) {
        // The history did not line up: start over from a snapshot.
        this.emit('resync', 'welcome.ops did not reach welcome.rev');
        return;
      }
      this._ready(peers, msg.rev);
      return;
    }
    if (typeof msg.text !== 'string') return;
    this.stats.welcomeText++;
    if (this._outstandingTooLarge() && this.outstanding.refusals === this.outstanding.sends) {
      // Every frame that carried it was refused for size: it was never
      // applied, and resending it whole would only be refused again.
      this._unsend();
    }
    if (this.outstanding && this.send) {
      // Long absence: we cannot tell whether our in-flight op was applied.
      // Resend it with its rev and id; `ack` means it had been applied,
      // `stale_rev` means it had not (docs/protocol.md).
      this.resolving = { text: msg.text, rev: msg.rev, peers, queue: [] };
      this._transmit(this.outstanding, null, true);
      return;
    }
    this._rebase(msg.text, msg.rev, false);
    this._ready(peers, msg.rev);
  }

  _ready(peers, rev) {
    this.ready = true;
    this.sentCursor = null;
    this.peers.clear();
    for (const p of peers) {
      if (!p || p.client === this.clientId) continue;
      this.peers.set(p.client, { client: p.client, user: p.user || null });
    }
    this.emit('ready', this);
    this.emit('peers', this.peers);
    for (const p of peers) {
      if (p && p.client !== this.clientId && p.cursor) this.emit('cursor', p.client, this._toLocal(p.cursor, rev));
    }
    if (this._outstandingTooLarge()) {
      // Refused for size and not among welcome.ops: not applied. Send it
      // again in pieces that fit, with new ids.
      this._unsend();
    }
    if (this.outstanding) {
      // Resend what is still in flight, transformed to the current revision, same id.
      const o = this.outstanding;
      this._transmit(o, this.buffer ? null : o.cursor);
    } else {
      this._flush();
    }
    this.emit('saved', this.saved);
    if (this.saved && this.editor.getCursor) this.localCursor(this.editor.getCursor());
  }

  /** Replace our view of the server with `text` at `rev`, keeping local edits. */
  _rebase(text, rev, applied) {
    let base = this.serverText;
    let pending;
    if (this.outstanding && applied) {
      base = apply(base, this.outstanding.op);
      pending = this.buffer;
    } else {
      pending = this.pending;
    }
    const d = diffOp(base, text);
    let local = d;
    if (pending) [pending, local] = transform(pending, d);
    this.outstanding = null;
    this.buffer = pending && !isNoop(pending) ? pending : null;
    this.serverText = text;
    this.rev = rev;
    this.history = [];
    if (!isNoop(local)) this.editor.applyRemote(local);
  }

  _finishResolving(applied) {
    this.stats[applied ? 'resendApplied' : 'resendNotApplied']++;
    const r = this.resolving;
    this.resolving = null;
    this._rebase(r.text, r.rev, applied);
    this._ready(r.peers, r.rev);
    for (const m of r.queue) this.receive(m);
  }

  _serverOp(rev, op, client, cursor, id, inWelcome = false) {
    if (this.rev === null || rev !== this.rev + 1) {
      if (this.rev !== null && rev <= this.rev) return true; // already have it
      this.emit('resync', `expected revision ${this.rev === null ? '?' : this.rev + 1}, got ${rev}`);
      return false;
    }
    if (this.outstanding && id != null && id === this.outstanding.id) {
      // A server that names op ids in broadcasts: this is our own op.
      this._ack(rev);
      if (!inWelcome) this._flush();
      return true;
    }
    this._advanceServer(op);
    this.rev = rev;
    this._remember(rev, op);
    let local = op;
    if (this.outstanding) {
      const [o2, l2] = transform(this.outstanding.op, local);
      this.outstanding.op = o2;
      this.outstanding.rev = rev;
      local = l2;
    }
    if (this.buffer) {
      const [b2, l2] = transform(this.buffer, local);
      this.buffer = b2;
      local = l2;
    }
    if (this.sentCursor) this.sentCursor = transformCursor(this.sentCursor, op);
    if (!isNoop(local)) this.editor.applyRemote(local, { client, id, rev });
    if (client != null && client !== this.clientId && cursor) {
      this.emit('cursor', client, this._toLocal(cursor, rev));
    }
    this.emit('remote', client);
    return true;
  }

  _ack(rev) {
    const o = this.outstanding;
    this._advanceServer(o.op);
    this.rev = rev;
    this._remember(rev, o.op);
    this.outstanding = null;
    this.sentCursor = o.cursor && !this.buffer ? o.cursor : null;
  }

  _onAck(msg) {
    const o = this.outstanding;
    if (!o || msg.id !== o.id) return; // an ack for something long settled
    if (this.resolving) {
      if (msg.rev > this.resolving.rev) {
        // Applied only now, after the snapshot: reconnect; the next
        // snapshot includes it and the resend will be acknowledged.
        this.resolving = null;
        this.emit('resync', 'resend applied after the snapshot');
        return;
      }
      this._finishResolving(true);
      return;
    }
    if (msg.rev !== this.rev + 1) {
      this.emit('resync', `ack at revision ${msg.rev}, expected ${this.rev + 1}`);
      return;
    }
    this._ack(msg.rev);
    this._flush();
    this.emit('saved', this.saved);
    if (this.saved && this.editor.getCursor) this.localCursor(this.editor.getCursor());
  }

  _presence(msg) {
    if (msg.client === this.clientId) return;
    let p = this.peers.get(msg.client);
    if (!p) {
      p = { client: msg.client, user: msg.user || null };
      this.peers.set(msg.client, p);
      this.emit('peers', this.peers);
    } else if (msg.user && JSON.stringify(msg.user) !== JSON.stringify(p.user)) {
      p.user = msg.user;
      this.emit('peers', this.peers);
    }
    if ('cursor' in msg) {
      this.emit('cursor', msg.client, msg.cursor ? this._toLocal(msg.cursor, msg.rev) : null);
    }
  }

  _peerJoin(msg) {
    if (msg.client === this.clientId) return;
    this.peers.set(msg.client, { client: msg.client, user: msg.user || null });
    this.emit('peers', this.peers);
  }

  _peerLeave(msg) {
    if (this.peers.delete(msg.client)) this.emit('peers', this.peers);
    this.emit('cursor', msg.client, null);
  }

  /** Send the outstanding op again, same id (after a 'retry' event and a pause). */
  resend() {
    const o = this.outstanding;
    if (!o || !this.send) return;
    if (this.resolving) this._transmit(o, null, true);
    else if (this.ready) this._transmit(o, null);
  }

  _error(msg) {
    const o = this.outstanding;
    const mine = !!o && msg.id != null && msg.id === o.id;
    if (mine && msg.code === ERROR_CODES.RATE_LIMITED) {
      // Not applied this time: the session calls resend() after a pause.
      this.emit('retry', o.id);
      return;
    }
    if (this.resolving && mine) {
      if (msg.code === ERROR_CODES.STALE_REV || msg.code === ERROR_CODES.BAD_REV) {
        // It had not been applied: keep it as a local change, rebased on the snapshot.
        this._finishResolving(false);
        return;
      }
      // Refused outright (bad_op, forbidden, too_large): it can never be
      // applied. Undo every local change, adopt the snapshot, say so.
      const pending = this.pending;
      if (pending) this.editor.applyRemote(invert(pending, this.serverText));
      this.outstanding = null;
      this.buffer = null;
      this.emit('refused', msg);
      this._finishResolving(false);
      return;
    }
    if (!mine && msg.code === ERROR_CODES.BAD_REV && this.send && !this.ready && !this.resolving) {
      // Our `since` is in the server's future (it lost data?): start over from its snapshot.
      this.freshJoin = true;
      this.emit('resync', 'the server does not know our revision');
      return;
    }
    if (mine && (msg.code === ERROR_CODES.STALE_REV || msg.code === ERROR_CODES.BAD_REV)) {
      this.emit('resync', msg.code);
      return;
    }
    if (mine) {
      // The server refused our edit (bad_op, too_large, forbidden, ...): it
      // can never be applied. Undo it locally, and say so loudly.
      const pending = this.pending;
      const text = this.serverText;
      this.outstanding = null;
      this.buffer = null;
      if (pending) this.editor.applyRemote(invert(pending, text));
      this.emit('refused', msg);
      this.emit('saved', this.saved);
      return;
    }
    this.emit('server-error', msg);
  }
}
