"""A committed batch on its way out: each submit's frames, and their delivery to every connection.

An :class:`Item` carries one submit through a document's pipeline: who sent
it, what, and once ordered its result. :func:`encode` turns a batch into
frames (an ``ack`` for the author, an ``op`` for everyone else, encoded once
whatever the number of readers), and :func:`deliver` queues them on each
connection's :class:`~collab.peer.Peer` in revision order, one
``send_many`` per connection. A :class:`Flight` is an ordered batch whose
commit was started, until the document settles it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .hubconfig import DocumentFailed
from .metrics import ACK_LATENCY
from .peer import Peer
from .protocol import Cursor, Submit, _cur, ack_msg, encode as encode_msg, op_frames
from .sequencer import Saved
from .store.base import StoredOp


@dataclass(slots=True)
class Item:
    """One submit on its way through the pipeline: who sent what, and, once ordered, its result and frames."""

    peer: Peer | None
    sub: Submit
    #: For internal submits (the HTTP API): receives the revision.
    reply: "asyncio.Future[int] | None" = None
    #: The new entry, or the revision of an earlier application of the same id.
    result: StoredOp | int | None = None
    #: The author's ``ack`` frame (``None`` if it is not a connection).
    ack: str | None = None
    #: The ``op`` frame for the others (``None`` for a resend of an op applied earlier).
    frame: str | None = None
    #: The author's selection right after this op, sent with it.
    cursor: Cursor | None = None
    #: When the submit arrived (``time.monotonic()``), for the ack-latency histogram.
    arrived: float = field(default_factory=time.monotonic)

    def reset(self) -> None:
        """Forget the result and frames (the batch is ordered again)."""
        self.result = self.ack = self.frame = self.cursor = None


@dataclass(slots=True)
class Flight:
    """An ordered batch whose commit was started; settled in order by ``Document._landed``."""

    items: list[Item]
    new: list[StoredOp]
    #: The state to roll back to if another process took these revisions (stores that may conflict).
    saved: Saved | None
    last_snapshot: int
    #: A pipelined commit's future (``None`` for an awaited one).
    commit: "asyncio.Future[None] | None" = None
    #: The commit's outcome, once known: ``done``, and ``error`` if it failed.
    done: bool = False
    error: BaseException | None = None
    encoded: bool = False
    #: Another process took its revisions: rolled back and queued again.
    lost: bool = False


def encode(items: Iterable[Item]) -> None:
    """Fill in each item's ack for its author (if a connection), its broadcast (if new) and the author's selection."""
    for item in items:
        peer, result = item.peer, item.result
        to_author = item.reply is None and peer is not None
        if type(result) is int:  # a resend of an op applied earlier: nothing to broadcast
            if to_author:
                item.ack = encode_msg(ack_msg(item.sub.id, result))
            continue
        # The author's selection right after this op (unknown if it sent a later one since).
        cursor = peer.cursor if peer is not None and peer.cursor_rev == result.rev else None
        ack, item.frame = op_frames(result.rev, result.op, result.client, cursor, result.id)  # type: ignore[union-attr]
        item.cursor = cursor
        if to_author:
            item.ack = ack


def deliver(items: list[Item], peers: Iterable[Peer]) -> None:
    """Answer internal submitters and queue the encoded batch for every connection, in revision order.

    Each connection's frames of the whole batch are queued at once at the end
    (nobody joins or leaves in between): one ``send_many`` per connection.
    """
    outs: dict[Peer | None, list[str]] = {p: [] for p in peers}
    pairs = [(p, out.append) for p, out in outs.items()]
    # Sizes are summed once for everyone: the batch's broadcasts (an author is charged
    # its own op frames, which it does not receive, in place of its smaller acks).
    size = 0
    acked: list[float] = []  # arrival times of the items acknowledged here, for ACK_LATENCY
    for item in items:
        peer = item.peer
        if item.reply is not None:
            result = item.result
            item.reply.set_result(result if type(result) is int else result.rev)  # type: ignore[union-attr]
            acked.append(item.arrived)
        elif item.ack is not None and peer in outs:  # else it left (or was forwarded here): no ack from here
            outs[peer].append(item.ack)
            acked.append(item.arrived)
        frame = item.frame
        if frame is not None:
            size += len(frame) if frame.isascii() else len(frame.encode())
            for p, add in pairs:
                if p is not peer:
                    add(frame)
    ACK_LATENCY.since_each(acked)
    for p, out in outs.items():
        if out:
            p.send_many(out, size)  # type: ignore[union-attr]


def published(items: Iterable[Item]) -> list[list]:
    """The batch's new operations as the backplane carries them: ``[rev, op, client, id, cursor]``."""
    out = []
    for item in items:
        entry = item.result
        if item.frame is not None and isinstance(entry, StoredOp):
            out.append([entry.rev, entry.op, entry.client, entry.id, _cur(item.cursor)])
    return out


def refuse(items: list[Item], doc_id: str) -> None:
    """Tell internal submitters that their items will never be acknowledged."""
    for item in items:
        if item.reply is not None and not item.reply.done():
            item.reply.set_exception(DocumentFailed(doc_id))


def resolve(waiters: "list[asyncio.Future[None]]") -> None:
    """Wake everyone waiting on ``waiters``."""
    for w in waiters:
        if not w.done():
            w.set_result(None)


def run_each(calls: "list[tuple[Callable[[], object], asyncio.Future]]") -> None:
    """Run each call and settle its future with what it returned or raised (skipping abandoned ones)."""
    for fn, fut in calls:
        if not fut.done():
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)
