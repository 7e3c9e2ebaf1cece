"""The messages between a document's owner and the processes that forward work to it.

See ``docs/cluster.md``. A process whose clients edit a document that
another process owns sends their submits to the owner (``submit``); the
owner orders and commits them like its own clients', and answers only what
the commit does not say: a refusal (``refused``), or that it does not own
the document (``not_owner``). Everything arrives over the backplane, so each
reader checks a message field by field with the rules a client's ``op``
message is held to, and drops what does not pass: a malformed message
never reaches a document.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

from . import ot
from .fanout import Item
from .protocol import (
    ERROR_CODES, MAX_ID_LEN, MAX_NAME_LEN, MAX_REV, Cursor, ProtocolError, Submit, User, _cur, _cursor, _storable_id,
    valid_doc_name,
)

#: The longest refusal message carried back (a client's ``error.message`` is no longer).
MAX_REASON = 1000


@dataclass(slots=True)
class Forwarded:
    """One submit forwarded to the owner: the client that sent it, what it sent, and its user's name."""

    client: str
    sub: Submit
    #: Who made it ("" if unknown): the name the client joined with, or for an edit made over HTTP
    #: the token's name. The owner records it with the edit (the submit's ``author``).
    name: str = ""


@dataclass(frozen=True, slots=True)
class Refusal:
    """The owner refused the forwarded submit ``id``: the ``error`` its client gets."""

    doc: str
    id: str
    code: str
    message: str


class ForwardedAuthor:
    """The author of submits forwarded to this process (the owner): a client of process ``proc``.

    It stands where a connection stands in the document's pipeline. It gets
    no frames: its own process shows it the commit, read from the store.
    What that cannot say, a refusal, goes back with ``reply(proc, message)``.
    The forwarding process already checked that the client may edit.
    """

    __slots__ = ("doc", "id", "proc", "role", "user", "cursor", "cursor_rev", "transformed", "_reply")

    def __init__(self, doc: str, client: str, proc: str, reply: Callable[[str, dict], None]) -> None:
        self.doc = doc
        self.id = client
        self.proc = proc
        self.role = "edit"
        #: Always ``None``: each forwarded submit carries its author's name (``Submit.author``).
        self.user: User | None = None
        self.cursor: Cursor | None = None
        self.cursor_rev = 0
        self.transformed = 0
        self._reply = reply

    def send_msg(self, msg: dict) -> None:
        """Pass a refusal back to the client's process; acknowledgements it learns from the store."""
        if msg.get("type") == "error" and isinstance(msg.get("id"), str):
            self._reply(self.proc, refused_msg(self.doc, ProtocolError(msg["code"], msg["message"], msg["id"])))


class Forwarder:
    """A document's submits on their way to its owner, another process, until they are answered.

    The commit of a forwarded submit answers it: this process integrates the
    commit from the store and acknowledges the queued item by op id (see
    :meth:`collab.cluster.Replica.integrate`). A refusal answers it too.
    Until then it waits here, and is sent again if the owner changes.
    """

    def __init__(self, doc: str, send: Callable[[str, dict], None]) -> None:
        self.doc = doc
        self.send = send
        #: The owner's process id; ``None``: this process orders the document's submits itself.
        self.owner: str | None = None
        #: Forwarded and not yet answered, by op id (a resend joins its first copy), oldest first.
        self.awaiting: dict[str, list[Item]] = {}
        #: When the oldest of :attr:`awaiting` was last sent (loop time).
        self.sent_at = 0.0

    def take(self, batch: list[Item], known: Callable[[str], bool]) -> list[Item]:
        """Forward the submits of ``batch`` with new ids; returns the rest (resends of known ops, answered here)."""
        keep = [item for item in batch if known(item.sub.id)]
        out = [item for item in batch if not known(item.sub.id)] if keep else batch
        if out:
            if not self.awaiting:
                self.sent_at = asyncio.get_running_loop().time()
            awaiting = self.awaiting
            for item in out:
                same = awaiting.get(item.sub.id)
                if same is None:
                    awaiting[item.sub.id] = [item]
                else:
                    same.append(item)
            self._send(out)
        return keep

    def _send(self, items: list[Item]) -> None:
        assert self.owner is not None
        forwarded = [Forwarded(item.peer.id, item.sub, item.peer.user.name if item.peer.user is not None else "")
                     if item.peer is not None else Forwarded("server", item.sub, item.sub.author) for item in items]
        self.send(self.owner, submit_msg(self.doc, forwarded))

    def answered(self, op_id: str) -> list[Item]:
        """Take the waiting submits of op ``op_id`` (its commit or its refusal arrived)."""
        return self.awaiting.pop(op_id, [])

    def resend(self, owner: str) -> None:
        """Send everything waiting to ``owner`` (the document's owner changed, or it did not answer)."""
        self.owner = owner
        if self.awaiting:
            self.sent_at = asyncio.get_running_loop().time()
            self._send(self._waiting())

    def take_back(self) -> list[Item]:
        """Stop forwarding: everything waiting, to be ordered here."""
        self.owner = None
        items = self._waiting()
        self.awaiting = {}
        return items

    def _waiting(self) -> list[Item]:
        return [item for same in self.awaiting.values() for item in same]

    def overdue(self, now: float, after: float) -> bool:
        """Whether submits have waited for the owner longer than ``after`` seconds."""
        return bool(self.awaiting) and now - self.sent_at > after


def submit_msg(doc: str, items: list[Forwarded]) -> dict:
    """The ``submit`` message carrying ``items`` of ``doc`` to its owner."""
    return {"t": "submit", "doc": doc, "items": [
        {"client": f.client, "rev": f.sub.rev, "op": f.sub.op, "id": f.sub.id, "cursor": _cur(f.sub.cursor),
         "name": f.name} for f in items
    ]}


def _an_id(value: object) -> bool:
    return type(value) is str and 1 <= len(value) <= MAX_ID_LEN and _storable_id(value)


def _forwarded(item: object) -> Forwarded | None:
    if type(item) is not dict:
        return None
    client, rev, op_id, name = item.get("client"), item.get("rev"), item.get("id"), item.get("name", "")
    if not (_an_id(client) and _an_id(op_id) and type(rev) is int and 0 <= rev <= MAX_REV):
        return None
    if type(name) is not str or len(name) > MAX_NAME_LEN or not _storable_id(name):
        return None
    try:
        op, base_len, target_len = ot.checked(item.get("op"))
        cursor = _cursor(item.get("cursor"), op_id)
    except (ot.InvalidOperation, ProtocolError):
        return None
    sub = Submit(rev, op, op_id, cursor, (base_len, target_len), name)  # type: ignore[arg-type]
    return Forwarded(client, sub, name)


def read_submit(msg: dict) -> tuple[str, list[Forwarded]] | None:
    """A ``submit`` message's document and items, or ``None`` if any part of it is malformed."""
    doc, items = msg.get("doc"), msg.get("items")
    if not isinstance(doc, str) or not valid_doc_name(doc) or type(items) is not list or not items:
        return None
    out = []
    for item in items:
        forwarded = _forwarded(item)
        if forwarded is None:
            return None
        out.append(forwarded)
    return doc, out


def refused_msg(doc: str, exc: ProtocolError) -> dict:
    """The ``refused`` message for a forwarded submit the owner refused with ``exc``."""
    return {"t": "refused", "doc": doc, "id": exc.id, "code": exc.code, "message": exc.message[:MAX_REASON]}


def read_refused(msg: dict) -> Refusal | None:
    """A ``refused`` message as a :class:`Refusal`, or ``None`` if malformed."""
    doc, op_id, code, message = msg.get("doc"), msg.get("id"), msg.get("code"), msg.get("message")
    if not isinstance(doc, str) or not valid_doc_name(doc) or not _an_id(op_id) or code not in ERROR_CODES:
        return None
    if type(message) is not str or len(message) > MAX_REASON or not _storable_id(message):
        return None
    return Refusal(doc, op_id, code, message)  # type: ignore[arg-type]


def not_owner_msg(doc: str) -> dict:
    """The answer of a process that received work for ``doc`` without owning it."""
    return {"t": "not_owner", "doc": doc}


def read_not_owner(msg: dict) -> str | None:
    """The document of a ``not_owner`` message, or ``None`` if malformed."""
    doc = msg.get("doc")
    return doc if isinstance(doc, str) and valid_doc_name(doc) else None
