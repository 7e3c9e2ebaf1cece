// Wire constants shared with the server: close codes, error codes and the
// document-name rule. The one source is collab/protocol.py; this is its
// JavaScript copy, and tests/test_js_protocol.py checks that they match.
// Pure module: no DOM.

/** Every WebSocket close code the server uses, by name. */
export const CLOSE_CODES = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  INVALID_DATA: 1007,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  RESTART: 1012,
  OVERLOADED: 1013,
  BAD_TOKEN: 4001,
  NOT_ALLOWED: 4003,
  NO_DOCUMENT: 4004,
});

/** Every `error.code` the server sends, by name. */
export const ERROR_CODES = Object.freeze({
  BAD_MESSAGE: 'bad_message',
  BAD_OP: 'bad_op',
  BAD_REV: 'bad_rev',
  STALE_REV: 'stale_rev',
  FORBIDDEN: 'forbidden',
  TOO_LARGE: 'too_large',
  RATE_LIMITED: 'rate_limited',
});

/** A document name: 1-128 of `A-Z a-z 0-9 . _ -`, not starting with `.`. */
export const DOC_NAME_PATTERN = '^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$';
export const DOC_NAME_RE = new RegExp(DOC_NAME_PATTERN);

/** What the browser reports when a connection dropped without a close frame (not sent by servers). */
export const CLOSE_ABNORMAL = 1006;
