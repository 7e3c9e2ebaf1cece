"""A compact in-memory filter of op ids, answering "surely not seen" or "maybe seen".

The hub asks its store, once per batch, whether the batch's op ids were
applied long ago (a client resending an old op). They almost never were,
but an index lookup per id on every batch was the SQLite store's biggest
cost on the event loop. An :class:`IdFilter` (a Bloom filter) answers
"no" for nearly all of them from memory, and never answers "no" for an id
it was given, so only the rare "maybe" goes to the database.
"""

from __future__ import annotations

from typing import Iterable


class IdFilter:
    """A Bloom filter of strings, which grows by adding larger parts.

    ``id in f`` is ``True`` for every id given to :meth:`add`, and for about
    0.5% of the others per part (a part is added each time the filter
    quadruples, so there are few). 16 bits and 3 probes per id, unrolled: a
    lookup per part costs a fraction of the SQLite index lookup it saves.
    Uses :func:`hash`, so a filter is valid only in the process that built it.
    """

    BITS_PER_ID = 16

    __slots__ = ("_parts", "_room", "_capacity", "count")

    def __init__(self, ids: Iterable[str] = (), capacity: int = 4096) -> None:
        ids = list(ids)
        #: ``(bits, mask)`` for each part; new ids go into the last one.
        self._parts: list[tuple[bytearray, int]] = []
        self._capacity = 0
        self._room = 0
        #: Ids added.
        self.count = 0
        self._grow(max(capacity, 2 * len(ids)))
        self.update(ids)

    def _grow(self, capacity: int) -> None:
        size = 1 << max(6, (capacity * self.BITS_PER_ID - 1).bit_length())  # in bits, a power of two: probes are masked
        self._parts.append((bytearray(size >> 3), size - 1))
        self._capacity = capacity
        self._room = capacity

    def add(self, key: str) -> None:
        self.update((key,))

    def update(self, keys: Iterable[str]) -> None:
        """Add every id of ``keys`` (one call for a compaction's ids costs less per id)."""
        keys = list(keys)
        while len(keys) > self._room:  # fill the last part up, then add a larger one
            room = self._room
            self.update(keys[:room])
            keys = keys[room:]
            self._grow(4 * self._capacity)
        self._room -= len(keys)
        self.count += len(keys)
        bits, mask = self._parts[-1]
        for h in map(hash, keys):
            step = (h >> 32) | 1  # probes h, h + step, h + 2 * step (Kirsch and Mitzenmacher)
            x = h & mask
            bits[x >> 3] |= 1 << (x & 7)
            x = (h + step) & mask
            bits[x >> 3] |= 1 << (x & 7)
            x = (h + 2 * step) & mask
            bits[x >> 3] |= 1 << (x & 7)

    def __contains__(self, key: object) -> bool:
        return bool(self.maybe((key,)))  # type: ignore[arg-type]

    def maybe(self, keys: Iterable[str]) -> list[str]:
        """Those of ``keys`` that may have been added, in order (one call for a batch of ids)."""
        parts = self._parts
        out = []
        for key in keys:
            h = hash(key)
            step = (h >> 32) | 1
            for bits, mask in parts:
                x = h & mask
                if not bits[x >> 3] & (1 << (x & 7)):
                    continue
                x = (h + step) & mask
                if not bits[x >> 3] & (1 << (x & 7)):
                    continue
                x = (h + 2 * step) & mask
                if bits[x >> 3] & (1 << (x & 7)):
                    out.append(key)
                    break
        return out
