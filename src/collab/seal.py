"""Sealed messages: a process proves to the others that it committed what it announces, and that a
message sent to one process comes from another process of the deployment.

Redis carries messages; it is not an authority. Anyone who can publish on it
could announce a commit the store never made, so an unsealed announcement
only makes the processes read the store. The processes of one deployment
share a key that only they can read (it is kept in the store), and a process
that committed operations seals its announcement of them with a MAC (keyed
BLAKE2b, RFC 7693) of:

* the document's name (no announcement fits another document);
* the id of the operation just before the first announced one (a sealed
  message only fits the history it was made for: replayed into a document
  renamed or purged and made again, it does not fit);
* the commit time (a receiver refuses one older than :data:`MAX_AGE`);
* the operations as announced (``[rev, op, client, id, cursor]`` each).

A receiver applies a sealed announcement as it is only if the seal holds and
the operations extend its copy exactly (checked by
:class:`collab.cluster.Replica`); anything else makes it read the store.

Messages to one process (a forwarded edit, the owner's refusal, ``not_owner``:
see :mod:`collab.forwarding`) are sealed too, with the sending and the
receiving process's ids and the time they were sent
(:meth:`Seal.seal_to`). An edit forwarded to the owner is committed as it
is, so a receiver with a key drops every message to it that does not open
(:meth:`Seal.open_from`): publishing on Redis is not enough to edit a
document, or to refuse someone's edit. Within :data:`MAX_AGE` a genuine
message can be replayed; each is harmless again (an op id is applied once,
a refusal answers only an edit still waiting for it).

Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from typing import Any, Callable

try:
    import orjson

    _dumps: Callable[[Any], bytes] = orjson.dumps
except ImportError:  # pragma: no cover
    import json

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


#: Seconds a sealed announcement stays good for (clocks of a deployment's machines agree far better).
MAX_AGE = 300.0
#: Bytes of key the store makes for a deployment.
KEY_BYTES = 32


def new_key() -> bytes:
    """A fresh key for a deployment (the store keeps the first one made)."""
    return secrets.token_bytes(KEY_BYTES)


@dataclass(frozen=True, slots=True)
class Sealed:
    """What a good seal vouches for: the id before the first op, and the commit time."""

    prev: str
    at: float


class Seal:
    """Seals and opens announcements of committed operations, and messages to one process, with one
    deployment's key."""

    def __init__(self, key: bytes) -> None:
        if not 16 <= len(key) <= 64:
            raise ValueError("a seal key must have 16 to 64 bytes")
        self._key = key

    def _mac(self, doc: str, prev: str, at: float, ops: list) -> str:
        return hashlib.blake2b(_dumps([doc, prev, at, ops]), key=self._key, digest_size=32).hexdigest()

    def seal(self, msg: dict, doc: str, prev: str, at: float) -> dict:
        """Add the seal of ``msg["ops"]`` (committed at ``at``, after op ``prev``) to ``msg``; return it."""
        msg["prev"], msg["at"] = prev, at
        msg["mac"] = self._mac(doc, prev, at, msg["ops"])
        return msg

    def open(self, msg: dict, doc: str, now: float) -> Sealed | None:
        """What ``msg``'s seal vouches for, or ``None`` if it has none, a wrong one, or a stale one."""
        prev, at, mac, ops = msg.get("prev"), msg.get("at"), msg.get("mac"), msg.get("ops")
        if type(prev) is not str or type(at) is not float or type(mac) is not str or type(ops) is not list:
            return None
        if not math.isfinite(at) or abs(now - at) > MAX_AGE:
            return None
        try:
            good = self._mac(doc, prev, at, ops)
        except (TypeError, ValueError):  # not JSON as orjson writes it (cannot come from a process)
            return None
        if not hmac.compare_digest(good, mac):
            return None
        return Sealed(prev, at)

    def _mac_to(self, msg: dict, sender: str, to: str) -> str:
        body = {k: v for k, v in msg.items() if k != "mac" and k != "proc"}  # ``proc``: the receiver stamps it
        return hashlib.blake2b(_dumps(["to", sender, to, body]), key=self._key, digest_size=32).hexdigest()

    def seal_to(self, msg: dict, sender: str, to: str, at: float) -> dict:
        """Seal ``msg``, sent at ``at`` by process ``sender`` to process ``to`` only: adds ``at`` and
        ``mac`` to it; returns it."""
        msg["at"] = at
        msg["mac"] = self._mac_to(msg, sender, to)
        return msg

    def open_from(self, msg: dict, sender: str, to: str, now: float) -> bool:
        """Whether ``msg`` (as received; a ``proc`` field is not part of it) was sealed by process
        ``sender`` for process ``to``, no more than :data:`MAX_AGE` seconds from ``now``."""
        at, mac = msg.get("at"), msg.get("mac")
        if type(at) is not float or type(mac) is not str or not math.isfinite(at) or abs(now - at) > MAX_AGE:
            return False
        try:
            good = self._mac_to(msg, sender, to)
        except (TypeError, ValueError):  # not JSON as orjson writes it (cannot come from a process)
            return False
        return hmac.compare_digest(good, mac)
