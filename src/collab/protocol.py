"""Wire messages of protocol version 1, parsed into typed objects.

Sans-I/O: :func:`parse` turns one text frame into a :class:`Join`,
:class:`Submit` or :class:`Presence`, or raises :class:`ProtocolError` with
the error code the client must receive; whatever a client sends, what it
returns is safe to store and encode. The ``*_msg`` helpers build the
server's messages as dicts and :func:`encode` serializes them. Nothing here
touches a socket, a document or the event loop.

This module is the one source of the wire's constants: close codes
(``CLOSE_*``, :data:`CLOSE_CODES`), error codes (:data:`ERROR_CODES`) and the
document-name rule (:data:`DOC_NAME_PATTERN`, :func:`valid_doc_name`);
:func:`wire_constants` gives them as data for other languages' copies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from . import ot

try:  # orjson is a dependency, but keep a pure-Python fallback working.
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only without orjson
    _orjson = None

# Error codes (``error.code``).
BAD_MESSAGE = "bad_message"
BAD_OP = "bad_op"
BAD_REV = "bad_rev"
STALE_REV = "stale_rev"
FORBIDDEN = "forbidden"
TOO_LARGE = "too_large"
RATE_LIMITED = "rate_limited"

# Error codes of the HTTP API only: a revision thinned away by the retention setting (410).
REV_GONE = "rev_gone"

# WebSocket close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_OVERLOADED = 1013
CLOSE_BAD_TOKEN = 4001
CLOSE_NOT_ALLOWED = 4003
CLOSE_NO_DOCUMENT = 4004

#: Every ``error.code`` the server sends, with when it is sent.
ERROR_CODES: dict[str, str] = {
    BAD_MESSAGE: "not JSON, not an object, unknown type, bad fields",
    BAD_OP: "invalid operation or wrong base length",
    BAD_REV: "'rev' or 'since' in the future",
    STALE_REV: "base revision older than kept history",
    FORBIDDEN: "write by a read-only client",
    TOO_LARGE: "the document would exceed its size limit",
    RATE_LIMITED: "the client sends faster than allowed",
}

#: Every WebSocket close code the server uses, by name (``CLOSE_<NAME>``).
CLOSE_CODES: dict[str, int] = {
    "NORMAL": CLOSE_NORMAL,
    "GOING_AWAY": CLOSE_GOING_AWAY,
    "INVALID_DATA": CLOSE_INVALID_DATA,
    "POLICY": CLOSE_POLICY,
    "TOO_BIG": CLOSE_TOO_BIG,
    "INTERNAL": CLOSE_INTERNAL,
    "RESTART": CLOSE_RESTART,
    "OVERLOADED": CLOSE_OVERLOADED,
    "BAD_TOKEN": CLOSE_BAD_TOKEN,
    "NOT_ALLOWED": CLOSE_NOT_ALLOWED,
    "NO_DOCUMENT": CLOSE_NO_DOCUMENT,
}

#: The characters of a document name, as a regular-expression class body.
DOC_NAME_CHARS = "A-Za-z0-9._-"
#: A whole document name: 1-128 of :data:`DOC_NAME_CHARS`, not starting with
#: ``.``. The same text is a valid JavaScript ``RegExp``.
DOC_NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
DOC_NAME_RE = re.compile(DOC_NAME_PATTERN)
MAX_ID_LEN = 64
MAX_NAME_LEN = 64
MAX_COLOR_LEN = 32
#: The largest ``rev``/``since`` a client may name (JavaScript's largest exact
#: integer); a larger one is in the future of every document: ``bad_rev``.
MAX_REV = 2**53 - 1
#: The largest cursor offset a client may send (no document is longer).
MAX_OFFSET = ot.MAX_LENGTH


def wire_constants() -> dict[str, Any]:
    """The close codes, error codes and document-name rule, as JSON-ready data.

    What a client in another language must agree on; the JavaScript client's
    copy is tested against this.
    """
    return {"close_codes": dict(CLOSE_CODES), "error_codes": list(ERROR_CODES), "doc_name_pattern": DOC_NAME_PATTERN}


def valid_doc_name(name: str) -> bool:
    """1-128 of ``A-Z a-z 0-9 . _ -``, not starting with ``.``."""
    return type(name) is str and DOC_NAME_RE.fullmatch(name) is not None


class ProtocolError(Exception):
    """A message was refused; ``code`` is the ``error.code`` to send back."""

    def __init__(self, code: str, message: str, id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


# Not ``frozen``, though nothing changes them once made: a frozen dataclass's
# ``__init__`` sets each field through ``object.__setattr__``, which is slow,
# and the server makes a ``Cursor``, a ``Submit`` and a ``StoredOp`` for every
# operation.
@dataclass(slots=True)
class Cursor:
    """A selection in code points; ``anchor == head`` is a caret. Treat as immutable."""

    anchor: int
    head: int

    def to_json(self) -> dict[str, int]:
        return {"anchor": self.anchor, "head": self.head}


@dataclass(frozen=True, slots=True)
class User:
    """How a participant is shown to the others."""

    name: str
    color: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "color": self.color}


@dataclass(frozen=True, slots=True)
class Join:
    user: User | None
    since: int | None
    #: The client accepts ``batch`` frames (several messages in one frame).
    batch: bool = False
    #: The client takes ``title`` messages (a title set by hand, announced live).
    titles: bool = False


@dataclass(slots=True)
class Submit:
    """An ``op`` message from a client. Treat as immutable (see :class:`Cursor`)."""

    rev: int
    op: ot.Operation
    id: str
    cursor: Cursor | None
    #: ``ot.lengths(op)`` when the parser computed them (:func:`collab.ot.checked`), else ``None``.
    lengths: tuple[int, int] | None = None
    #: Who makes it, for a submit not from a connection (the HTTP API: the token's name); else "".
    author: str = ""


@dataclass(frozen=True, slots=True)
class Presence:
    rev: int
    cursor: Cursor | None
    user: User | None


Message = Join | Submit | Presence


_MISSING = object()


def _int_or_float(literal: str) -> int | float:
    """A JSON integer read the way orjson reads it: exact when it surely fits 64 bits
    (18 digits), else a float, which is infinity past a double's range."""
    return int(literal) if len(literal) < 19 else float(literal)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(data: str) -> Any:
    """The JSON value of ``data``: orjson, or for what it refuses, json within the same bounds.

    orjson refuses escaped lone surrogates (json reads them, and validation
    then names the field), integers past a double's range (read here as
    orjson reads those past 64 bits: as floats, so no number of thousands
    of digits exists after parsing) and nesting past 1,024 levels (json's
    ``RecursionError``, which the caller maps to ``bad_message``).
    """
    if _orjson is not None:
        try:
            return _orjson.loads(data)
        except ValueError:
            pass
    return json.loads(data, parse_int=_int_or_float, parse_constant=_no_constant)


def _encodes(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8, i.e. holds no lone surrogate (no encoder or store could take it)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _storable_id(id: str) -> bool:
    """Whether an id any store can keep: no lone surrogate, and no NUL (PostgreSQL's text refuses it)."""
    return "\x00" not in id and _encodes(id)


def _rev(msg: dict, field: str, *, optional: bool = False, id: str | None = None) -> int | None:
    value = msg.get(field)
    if type(value) is int and 0 <= value <= MAX_REV:
        return value
    if value is None and optional:
        return None
    if type(value) in (int, float) and value > MAX_REV:  # a float here: an integer past 64 bits
        raise ProtocolError(
            BAD_REV, f"'{field}' is past any revision a document can reach ({MAX_REV} at most): send one this document has", id
        )
    raise ProtocolError(BAD_MESSAGE, f"'{field}' must be a non-negative integer revision", id)


def _cursor(value: Any, id: str | None = None) -> Cursor | None:
    if value is None:
        return None
    if type(value) is dict:
        anchor, head = value.get("anchor"), value.get("head")
        if type(anchor) is int and type(head) is int and 0 <= anchor <= MAX_OFFSET and 0 <= head <= MAX_OFFSET:
            return Cursor(anchor, head)
    raise ProtocolError(
        BAD_MESSAGE, "'cursor' must be null or {\"anchor\": int, \"head\": int} with non-negative code point offsets", id
    )


def _user(value: Any) -> User | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(BAD_MESSAGE, "'user' must be an object {\"name\": str, \"color\": str}")
    name = value.get("name", "")
    color = value.get("color", "")
    if not isinstance(name, str) or not isinstance(color, str):
        raise ProtocolError(BAD_MESSAGE, "'user.name' and 'user.color' must be strings")
    if len(name) > MAX_NAME_LEN or len(color) > MAX_COLOR_LEN:
        raise ProtocolError(
            BAD_MESSAGE, f"'user.name' is limited to {MAX_NAME_LEN} and 'user.color' to {MAX_COLOR_LEN} characters"
        )
    if not _encodes(name + color):
        raise ProtocolError(BAD_MESSAGE, "'user' contains a lone surrogate: send valid Unicode text")
    return User(name, color)


def parse(data: str | bytes) -> Message:
    """Parse one frame from a client into a message object.

    Raises :class:`ProtocolError` (``bad_message``, ``bad_op`` for an
    operation that is not well formed, ``bad_rev`` for a revision no
    document can reach) for anything else. What comes back holds only
    strings that encode as UTF-8 and integers of at most 53 bits, so no
    later step (the hub, the store, the encoder) can fail on a client's
    content. The base-length check of an operation needs the document and
    is the hub's job.
    """
    if not isinstance(data, str):
        raise ProtocolError(BAD_MESSAGE, "binary frames are not accepted: send JSON in a text frame")
    try:
        msg = _loads(data)
    except RecursionError:
        raise ProtocolError(BAD_MESSAGE, "the message is nested too deeply: send one flat JSON object") from None
    except (ValueError, TypeError):
        raise ProtocolError(BAD_MESSAGE, "the frame is not valid JSON") from None
    if type(msg) is not dict:
        raise ProtocolError(BAD_MESSAGE, "a message must be a JSON object with a string field 'type'")
    kind = msg.get("type")
    if kind == "op":
        id = msg.get("id")
        if type(id) is not str or not 1 <= len(id) <= MAX_ID_LEN:
            raise ProtocolError(BAD_MESSAGE, f"'id' must be a string of 1-{MAX_ID_LEN} characters")
        # Checked first, as the error for any later field carries the id back.
        if not id.isprintable() and not _storable_id(id):
            raise ProtocolError(BAD_MESSAGE, "'id' contains a lone surrogate or U+0000: use printable text, e.g. a UUID")
        rev = _rev(msg, "rev", id=id)
        op = msg.get("op", _MISSING)
        if op is _MISSING:
            raise ProtocolError(BAD_MESSAGE, "'op' is missing", id)
        try:
            op, base_len, target_len = ot.checked(op)
        except ot.InvalidOperation as exc:
            raise ProtocolError(BAD_OP, str(exc), id) from None
        cursor = msg.get("cursor")
        if cursor is not None:
            cursor = _cursor(cursor, id)
        return Submit(rev, op, id, cursor, (base_len, target_len))  # type: ignore[arg-type]
    if kind == "presence":
        return Presence(_rev(msg, "rev"), _cursor(msg.get("cursor")), _user(msg.get("user")))  # type: ignore[arg-type]
    if kind == "join":
        return Join(_user(msg.get("user")), _rev(msg, "since", optional=True), msg.get("batch") is True,
                    msg.get("titles") is True)
    if isinstance(kind, str):
        raise ProtocolError(BAD_MESSAGE, f"unknown message type {kind[:40]!r}: expected join, op or presence")
    raise ProtocolError(BAD_MESSAGE, "a message must have a string field 'type'")


def encode(msg: dict[str, Any]) -> str:
    """Serialize a server message to the text of one frame."""
    if _orjson is not None:
        return _orjson.dumps(msg).decode()
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":"))


def batch_frame(frames: list[str]) -> str:
    """One ``batch`` frame carrying already-encoded messages, in order (no re-encoding)."""
    return '{"type":"batch","messages":[' + ",".join(frames) + "]}"


def _cur(cursor: Cursor | None) -> dict[str, int] | None:
    return None if cursor is None else cursor.to_json()


def _usr(user: User | None) -> dict[str, str] | None:
    return None if user is None else user.to_json()


def ack_msg(id: str, rev: int) -> dict[str, Any]:
    return {"type": "ack", "id": id, "rev": rev}


def op_msg(rev: int, op: ot.Operation, client: str, cursor: Cursor | None, id: str | None = None) -> dict[str, Any]:
    """An applied operation for the other clients; ``id`` lets a reconnected author recognize its own."""
    msg: dict[str, Any] = {"type": "op", "rev": rev, "op": op, "client": client, "cursor": _cur(cursor)}
    if id is not None:
        msg["id"] = id
    return msg


def op_frames(rev: int, op: ot.Operation, client: str, cursor: Cursor | None, id: str) -> tuple[str, str]:
    """``encode(ack_msg(id, rev))`` and ``encode(op_msg(rev, op, client, cursor, id))``, together.

    The hub sends both for every operation, so they are built here without
    the helper calls.
    """
    if _orjson is None:
        return encode(ack_msg(id, rev)), encode(op_msg(rev, op, client, cursor, id))
    dumps = _orjson.dumps
    cur = None if cursor is None else {"anchor": cursor.anchor, "head": cursor.head}
    return (
        dumps({"type": "ack", "id": id, "rev": rev}).decode(),
        dumps({"type": "op", "rev": rev, "op": op, "client": client, "cursor": cur, "id": id}).decode(),
    )


def join_msg(client: str, user: User | None) -> dict[str, Any]:
    return {"type": "join", "client": client, "user": _usr(user)}


def leave_msg(client: str) -> dict[str, Any]:
    return {"type": "leave", "client": client}


def presence_msg(client: str, rev: int, cursor: Cursor | None, user: User | None) -> dict[str, Any]:
    return {"type": "presence", "client": client, "rev": rev, "cursor": _cur(cursor), "user": _usr(user)}


def title_msg(title: str | None) -> dict[str, Any]:
    """The document's title set by hand (``None``: none, its first heading stands in), changed just now."""
    return {"type": "title", "title": title}


def error_msg(code: str, message: str, id: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if id is not None:
        msg["id"] = id
    return msg


def peer_json(client: str, user: User | None, cursor: Cursor | None) -> dict[str, Any]:
    return {"client": client, "user": _usr(user), "cursor": _cur(cursor)}
