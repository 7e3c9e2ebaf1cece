// A small in-memory server speaking the collab protocol, for the randomized
// client simulations (the scenario cases are transcripts in
// tests/conformance/client.json, shared with the Python client): one
// document, a bounded history (to exercise the long-absence path),
// idempotent submit by id, and per-connection FIFO queues whose delivery the
// test controls (so any interleaving, and message loss on disconnect, can be
// simulated).
import { apply, transform, transformCursor, validate, cpLength } from '../src/ot.js';

export class FakeServer {
  /**
   * @param {object} [opts]
   * @param {number} [opts.historyDepth]
   * @param {number} [opts.maxMessageBytes]  a message above it closes the connection (like 1009)
   * @param {number} [opts.announce]  welcome.max_message_bytes to send (default: none)
   * @param {function} [opts.closeCode]  () => the close code seen for a refused frame (default 1009)
   */
  constructor({ historyDepth = Infinity, maxMessageBytes = Infinity, announce = null, closeCode = () => 1009 } = {}) {
    this.maxMessageBytes = maxMessageBytes;
    this.announce = announce;
    this.closeCode = closeCode;
    this.tooLarge = []; // sizes of the frames refused
    this.frames = []; // sizes of the op frames accepted
    this.text = '';
    this.rev = 0;
    this.log = []; // {rev, op, client, id}
    this.ids = new Map();
    this.historyDepth = historyDepth;
    this.conns = new Set();
    this.nextClient = 1;
  }

  get oldestKept() {
    // Revisions > oldestKept are in history; `since`/`rev` >= oldestKept are resumable.
    return Math.max(0, this.rev - Math.min(this.historyDepth, this.log.length));
  }

  /** Attach a SyncClient through a new connection. */
  connect(client) {
    const conn = { id: `c${this.nextClient++}`, client, toServer: [], toClient: [], open: true, joined: false, user: null, cursor: null };
    this.conns.add(conn);
    client.connected((msg) => {
      if (!conn.open) return;
      const json = JSON.stringify(msg);
      const size = Buffer.byteLength(json, 'utf8');
      if (size > this.maxMessageBytes) {
        // Refused before the application sees it; the client learns of it
        // when the connection closes (the test pumps that with closeRefused).
        this.tooLarge.push(size);
        conn.refused = true;
        return;
      }
      if (msg.type === 'op') this.frames.push(size);
      if (!conn.refused) conn.toServer.push(JSON.parse(json));
    });
    return conn;
  }

  /** Cut a connection; in-flight messages to the server are delivered first
   * if `deliverInflight` (the op arrived, the ack got lost). */
  disconnect(conn, deliverInflight = false, code = undefined) {
    if (deliverInflight) this.pumpServer(conn);
    conn.open = false;
    conn.toServer = [];
    conn.toClient = [];
    this.conns.delete(conn);
    conn.client.disconnected(code);
    for (const c of this.conns) if (c.joined) this._to(c, { type: 'leave', client: conn.id });
  }

  _to(conn, msg) {
    conn.toClient.push(JSON.parse(JSON.stringify(msg)));
  }

  /** Process every message the server has received from `conn`. */
  pumpServer(conn) {
    while (conn.open && conn.toServer.length) this._handle(conn, conn.toServer.shift());
  }

  /** Deliver up to `n` queued messages to the client. */
  pumpClient(conn, n = Infinity) {
    while (conn.open && n-- > 0 && conn.toClient.length) conn.client.receive(conn.toClient.shift());
  }

  /** Close every connection that sent a frame too large (as the server
   * would: 1009, or 1006 when the reset beats the close frame). Returns
   * how many were closed. */
  closeRefused() {
    let n = 0;
    for (const c of [...this.conns]) {
      if (!c.refused) continue;
      this.pumpServer(c); // what came before the refused frame
      this.disconnect(c, false, this.closeCode());
      n++;
    }
    return n;
  }

  settle() {
    for (let i = 0; i < 1000; i++) {
      let busy = false;
      for (const c of [...this.conns]) {
        if (c.toServer.length || c.toClient.length) busy = true;
        this.pumpServer(c);
        this.pumpClient(c);
      }
      if (!busy) return;
    }
    throw new Error('did not settle');
  }

  _handle(conn, msg) {
    if (msg.type === 'join') {
      conn.joined = true;
      conn.user = msg.user || null;
      const peers = [...this.conns].filter((c) => c !== conn && c.joined).map((c) => ({ client: c.id, user: c.user, cursor: c.cursor }));
      const w = { type: 'welcome', client: conn.id, rev: this.rev, role: 'edit', peers };
      if (this.announce) w.max_message_bytes = this.announce;
      if (msg.since == null || msg.since < this.oldestKept) w.text = this.text;
      else if (msg.since > this.rev) return this._to(conn, { type: 'error', code: 'bad_rev', message: 'future' });
      else w.ops = this.log.filter((e) => e.rev > msg.since).map((e) => ({ rev: e.rev, op: e.op, client: e.client, id: e.id }));
      this._to(conn, w);
      for (const c of this.conns) if (c !== conn && c.joined) this._to(c, { type: 'join', client: conn.id, user: conn.user });
      return undefined;
    }
    if (msg.type === 'op') {
      if (this.ids.has(msg.id)) return this._to(conn, { type: 'ack', id: msg.id, rev: this.ids.get(msg.id) });
      if (msg.rev > this.rev) return this._to(conn, { type: 'error', code: 'bad_rev', message: 'future', id: msg.id });
      if (msg.rev < this.oldestKept) return this._to(conn, { type: 'error', code: 'stale_rev', message: 'stale', id: msg.id });
      let op = msg.op;
      for (const e of this.log) if (e.rev > msg.rev) [op] = transform(op, e.op);
      validate(op, cpLength(this.text));
      this.text = apply(this.text, op);
      this.rev += 1;
      for (const c of this.conns) if (c.cursor) c.cursor = transformCursor(c.cursor, op);
      conn.cursor = msg.cursor || conn.cursor;
      this.log.push({ rev: this.rev, op, client: conn.id, id: msg.id });
      this.ids.set(msg.id, this.rev);
      this._to(conn, { type: 'ack', id: msg.id, rev: this.rev });
      for (const c of this.conns) if (c !== conn && c.joined) this._to(c, { type: 'op', rev: this.rev, op, client: conn.id, cursor: conn.cursor });
      return undefined;
    }
    if (msg.type === 'presence') {
      conn.cursor = msg.cursor;
      if (msg.user) conn.user = msg.user;
      for (const c of this.conns) if (c !== conn && c.joined) this._to(c, { type: 'presence', client: conn.id, rev: this.rev, cursor: conn.cursor, user: conn.user });
    }
    return undefined;
  }
}

/** A fake editor holding a plain string, for driving a SyncClient. */
export class FakeEditor {
  constructor() {
    this.text = '';
    this.cursor = { anchor: 0, head: 0 };
    this.cursors = new Map();
  }
  applyRemote(op) {
    this.text = apply(this.text, op);
    this.cursor = transformCursor(this.cursor, op);
  }
  getCursor() {
    return this.cursor;
  }
}
