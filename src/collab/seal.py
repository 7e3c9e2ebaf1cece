"""Sealed bundles and records: everything read from Redis comes from a process of the deployment.

Redis carries messages; it is not an authority. Anyone who can publish on it
could announce a commit the store never made, forward an edit to a
document's owner (which commits it), refuse someone's edit, or show a
presence that is not there. The processes of one deployment share a key
that only they can read (it is kept in the store), and each bundle a
process publishes (see :mod:`collab.backplane.redis`) goes out with a MAC
of its bytes (keyed BLAKE2b, RFC 7693) in front. A receiver with the key
drops every bundle whose MAC does not hold, before parsing it; a bundle also
names its sender, the time it was sent and its number in the sender's
sequence, so a genuine one replayed later is dropped too (by
:class:`~collab.backplane.redis.RedisBackplane`).

The records processes keep in Redis (who is on a document, who owns it,
which processes are alive) are sealed the same way, each for the key it is
stored under, and a record that does not open is taken as absent.

What a genuine bundle says is still checked for fit: an announced commit is
applied as it is only if it extends the receiver's copy exactly (the next
revision, after the operation it names, spanning the whole text; see
:class:`collab.cluster.Replica`), else the receiver reads the store.

Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: Seconds a sealed bundle stays good for (clocks of a deployment's machines agree far better).
MAX_AGE = 300.0
#: Bytes of key the store makes for a deployment.
KEY_BYTES = 32
#: Bytes of the MAC in front of a sealed bundle or record (hex digits of a 32-byte BLAKE2b).
MAC_BYTES = 64


def new_key() -> bytes:
    """A fresh key for a deployment (the store keeps the first one made)."""
    return secrets.token_bytes(KEY_BYTES)


class Seal:
    """Seals and opens what one deployment's processes write to Redis, with its key."""

    def __init__(self, key: bytes) -> None:
        if not 16 <= len(key) <= 64:
            raise ValueError("a seal key must have 16 to 64 bytes")
        self._key = key

    def _mac(self, name: bytes, value: bytes) -> bytes:
        h = hashlib.blake2b(name, key=self._key, digest_size=32, person=b"collab")
        h.update(b"\0")
        h.update(value)
        return h.hexdigest().encode()

    def seal(self, name: str, value: bytes) -> bytes:
        """``value`` as it is written under ``name`` (the bus for a bundle; a key, or key and field, for
        a record): its MAC (:data:`MAC_BYTES` hex digits) in front, which holds under that name only."""
        return self._mac(name.encode(), value) + value

    def open(self, name: str, data: bytes) -> bytes | None:
        """The value of ``data`` read under ``name`` if its MAC holds, else ``None``."""
        if len(data) <= MAC_BYTES:
            return None
        value = data[MAC_BYTES:]
        return value if hmac.compare_digest(self._mac(name.encode(), value), data[:MAC_BYTES]) else None
