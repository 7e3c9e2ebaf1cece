"""The text of an open document, behind a small interface.

:class:`DocText` is what the hub edits. Its methods are the only way the
hub touches text, so its representation can change without the hub
noticing.

Representation. A short text is one Python ``str``, edited with
:func:`collab.ot.apply` (slicing a few KiB is as cheap as any index). Past
:attr:`DocText.SMALL` code points the text becomes a list of
*chunks* (``str`` pieces of about :attr:`DocText.CHUNK` code points) with a
Fenwick tree of their lengths, so finding a position and editing it costs
``O(log chunks + CHUNK)`` instead of copying the whole document: the
per-edit cost no longer grows with the document. ``str(text)`` joins the
chunks once and caches the result until the next edit (the hub needs it
only for snapshots and for ``welcome`` messages).
"""

from __future__ import annotations

from . import ot


def utf8_len(s: str) -> int:
    """``len(s.encode())`` (lone surrogates count 3, as ``surrogatepass`` writes them); O(1) for ASCII."""
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def _wide(s: str) -> int:
    """The UTF-8 bytes of ``s`` beyond one per code point: 0 for ASCII, checked without encoding."""
    return 0 if s.isascii() else len(s.encode("utf-8", "surrogatepass")) - len(s)


def _byte_delta(before: str, op: ot.Operation) -> int:
    """How many bytes of UTF-8 ``op`` (already checked against ``before``) adds: the cost of the edit, not the text."""
    delta = pos = 0
    for c in op:
        if type(c) is str:
            delta += utf8_len(c)
        elif c > 0:  # type: ignore[operator]
            pos += c  # type: ignore[operator]
        elif c < 0:  # type: ignore[operator]
            delta -= utf8_len(before[pos : pos - c])  # type: ignore[operator]
            pos -= c  # type: ignore[operator]
    return delta


class DocText:
    """A document's text; :meth:`apply` edits it in place.

    ``apply`` has exactly :func:`collab.ot.apply` semantics, including its
    errors: an operation whose base length is not ``len(self)``, or that
    holds a component that is neither ``int`` nor ``str``, raises
    :class:`collab.ot.InvalidOperation` and leaves the text unchanged.
    """

    #: Below this many code points the text is one plain ``str``; above it chunks
    #: are cheaper per edit than slicing one ``str`` (measured with a real editing
    #: trace, see ``docs/benchmarks.md``).
    SMALL = 8 * 1024
    #: Target chunk size in code points; a chunk is split past ``2 * CHUNK``.
    CHUNK = 2048

    __slots__ = ("_str", "_chunks", "_tree", "_top", "_len", "_wide", "_small", "_chunk", "_hint", "_hint_start",
                 "_pending")

    def __init__(self, text: str = "", *, small: int | None = None, chunk: int | None = None) -> None:
        self._small = self.SMALL if small is None else small
        self._chunk = max(1, self.CHUNK if chunk is None else chunk)
        self._len = len(text)
        #: Its UTF-8 bytes beyond one per code point (0 while it is ASCII), kept up to date by each
        #: edit: ``len + _wide`` is its size in bytes (for the document list).
        self._wide = _wide(text)
        #: The whole text, when known: the representation in small mode, a cache otherwise.
        self._str: str | None = text
        #: ``None`` in small mode, else the chunks (none of them empty).
        self._chunks: list[str] | None = None
        #: Fenwick tree over chunk lengths (1-based); ``None`` when it must be rebuilt.
        self._tree: list[int] | None = None
        self._top = 0
        #: The chunk edited last (-1: none) and where it starts: typing stays in one
        #: chunk, so the next edit usually needs no tree lookup.
        self._hint = -1
        self._hint_start = 0
        #: Length change of the hint chunk not yet added to the tree.
        self._pending = 0
        if self._len > self._small:
            self._to_chunks(text)

    # -- the interface --------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    @property
    def utf8_bytes(self) -> int:
        """The text's length in bytes of UTF-8, without encoding it (each edit counts what it changes)."""
        return self._len + self._wide

    def __str__(self) -> str:
        s = self._str
        if s is None:
            assert self._chunks is not None
            s = self._str = "".join(self._chunks)
        return s

    def head(self, n: int) -> str:
        """The first ``n`` code points (fewer if the text is shorter), without joining the whole text."""
        s = self._str
        if s is not None:
            return s[:n]
        assert self._chunks is not None
        parts, got = [], 0
        for chunk in self._chunks:
            parts.append(chunk)
            got += len(chunk)
            if got >= n:
                break
        return "".join(parts)[:n]

    def apply(self, op: ot.Operation) -> None:
        """Apply ``op`` (its base length must be ``len(self)``)."""
        if self._chunks is None:
            assert self._str is not None
            before = self._str
            text = ot.apply(before, op)
            self._str = text
            self._len = len(text)
            self._wide = 0 if text.isascii() else self._wide + _byte_delta(before, op) - len(text) + len(before)
            if self._len > self._small:
                self._to_chunks(text)
            return
        if len(op) <= 4 and self._splice_in_hint(op):
            return
        # Check everything first, as ot.apply does, so a bad op changes nothing.
        span = 0
        for c in op:
            t = type(c)
            if t is int:
                span += c if c > 0 else -c
            elif t is not str:
                raise ot._bad_component(c)
        if span != self._len:
            raise ot.InvalidOperation(
                f"operation spans {ot._plural(span, 'character')} but the document has {self._len}"
            )
        self._str = None
        pos = 0
        for c in op:
            if type(c) is str:
                if c:
                    self._insert(pos, c)
                    pos += len(c)
            elif c > 0:
                pos += c
            elif c < 0:
                self._delete(pos, -c)
        if self._len <= self._small // 4:
            self._to_small()

    def _splice_in_hint(self, op: ot.Operation) -> bool:
        """The fast path for typing: apply ``[retain?, insert?, delete?, retain?]``
        when it falls inside the chunk edited last. False (nothing done) otherwise."""
        i = self._hint
        if i < 0:
            return False
        n = len(op)
        k = pos = dl = rest = 0
        ins = ""
        c = op[0] if n else 0
        if type(c) is int and c > 0:
            pos = c
            k = 1
        if k < n and type(op[k]) is str:
            ins = op[k]  # type: ignore[assignment]
            k += 1
        if k < n and type(op[k]) is int and op[k] < 0:  # type: ignore[operator]
            dl = -op[k]  # type: ignore[operator]
            k += 1
        if k < n and type(op[k]) is int and op[k] > 0:  # type: ignore[operator]
            rest = op[k]  # type: ignore[assignment]
            k += 1
        if k != n or pos + dl + rest != self._len or not (ins or dl):
            return False
        chunks = self._chunks
        assert chunks is not None
        piece = chunks[i]
        start = self._hint_start
        off = pos - start
        if not (0 < off or pos == start == 0) or off + dl > len(piece):
            return False
        size = len(piece) - dl + len(ins)
        if size <= 0 or size > 2 * self._chunk:
            return False
        if not ins.isascii():
            self._wide += _wide(ins)
        if dl and self._wide:  # an ASCII text loses no wide characters
            self._wide -= _wide(piece[off : off + dl])
        chunks[i] = piece[:off] + ins + piece[off + dl :]
        delta = len(ins) - dl
        self._pending += delta
        self._len += delta
        self._str = None
        if self._len <= self._small // 4:
            self._to_small()
        return True

    def copy(self) -> "DocText":
        """An independent copy, cheaper than ``DocText(str(text))``.

        The pieces are immutable ``str`` objects and are shared: this copies
        a list of about ``len / CHUNK`` references, not the text, so saving
        the state before a batch (to roll back on a conflict) stays cheap on
        a large document.
        """
        other = DocText.__new__(DocText)
        other._small = self._small
        other._chunk = self._chunk
        other._len = self._len
        other._wide = self._wide
        other._str = self._str
        other._chunks = None if self._chunks is None else list(self._chunks)
        other._tree = None if self._tree is None else list(self._tree)
        other._top = self._top
        other._hint = self._hint
        other._hint_start = self._hint_start
        other._pending = self._pending
        return other

    # -- representation changes -------------------------------------------------

    def _to_chunks(self, text: str) -> None:
        """Switch to (or rebalance) the chunked form, holding ``text``."""
        self._chunks = self._split(text)
        self._invalidate()
        self._str = text

    def _to_small(self) -> None:
        text = str(self)
        self._chunks = None
        self._invalidate()
        self._str = text

    def _split(self, text: str) -> list[str]:
        """Cut ``text`` into near-equal pieces of at most about ``CHUNK`` code points."""
        n = len(text)
        if n == 0:
            return []
        k = -(-n // self._chunk)
        size = -(-n // k)
        return [text[i : i + size] for i in range(0, n, size)]

    # -- the Fenwick tree ----------------------------------------------------------

    def _invalidate(self) -> None:
        """The chunk list changed shape: rebuild the tree on the next lookup."""
        self._tree = None
        self._hint = -1
        self._pending = 0

    def _locate(self, pos: int) -> tuple[int, int]:
        """Like :meth:`_find`, but answered from the hint chunk when ``pos`` is in it."""
        i = self._hint
        if i >= 0:
            start = self._hint_start
            assert self._chunks is not None
            if start < pos <= start + len(self._chunks[i]) or pos == start == 0:
                return i, pos - start
            if self._pending:
                self._add(i, self._pending)
                self._pending = 0
        i, off = self._find(pos)
        self._hint = i
        self._hint_start = pos - off
        return i, off

    def _build(self) -> list[int]:
        """Rebuild the tree from the chunk lengths in O(chunks)."""
        assert self._chunks is not None
        n = len(self._chunks)
        tree = [0] * (n + 1)
        for i, piece in enumerate(self._chunks, 1):
            tree[i] += len(piece)
            j = i + (i & -i)
            if j <= n:
                tree[j] += tree[i]
        self._tree = tree
        top = 1
        while top * 2 <= n:
            top *= 2
        self._top = top if n else 0
        return tree

    def _find(self, pos: int) -> tuple[int, int]:
        """The 0-based chunk holding position ``pos`` and the offset in it.

        A position on a boundary between two chunks is reported at the end
        of the earlier one; ``0 < offset <= len(chunk)`` unless ``pos == 0``.
        """
        tree = self._tree
        if tree is None:
            tree = self._build()
        n = len(tree) - 1
        idx = 0
        bit = self._top
        while bit:
            nxt = idx + bit
            if nxt <= n and tree[nxt] < pos:
                idx = nxt
                pos -= tree[nxt]
            bit >>= 1
        return idx, pos

    def _add(self, i: int, delta: int) -> None:
        """Add ``delta`` to the length of chunk ``i`` (0-based) in the tree."""
        tree = self._tree
        assert tree is not None
        n = len(tree) - 1
        i += 1
        while i <= n:
            tree[i] += delta
            i += i & -i

    # -- edits -------------------------------------------------------------------------

    def _insert(self, pos: int, s: str) -> None:
        chunks = self._chunks
        assert chunks is not None
        self._len += len(s)
        self._wide += _wide(s)
        if not chunks:
            chunks.extend(self._split(s))
            self._invalidate()
            return
        i = self._hint
        start = self._hint_start
        if i >= 0 and (start < pos <= start + len(chunks[i]) or pos == start == 0):
            off = pos - start  # the usual case, typing: same chunk as the last edit
        else:
            i, off = self._locate(pos)
        if i == len(chunks):  # only when pos is past the end, which the span check forbids
            i, off = i - 1, len(chunks[i - 1])  # pragma: no cover
        piece = chunks[i]
        new = piece[:off] + s + piece[off:]
        if len(new) <= 2 * self._chunk:
            chunks[i] = new
            self._pending += len(s)
        else:
            chunks[i : i + 1] = self._split(new)
            self._invalidate()

    def _delete(self, pos: int, n: int) -> None:
        chunks = self._chunks
        assert chunks is not None
        self._len -= n
        i, off = self._locate(pos)
        emptied = False
        while n > 0:
            piece = chunks[i]
            if off >= len(piece):
                i += 1
                off = 0
                continue
            take = min(n, len(piece) - off)
            if self._wide:
                self._wide -= _wide(piece[off : off + take])
            if off == 0 and take == len(piece):
                chunks[i] = ""
                emptied = True
            else:
                chunks[i] = piece[:off] + piece[off + take :]
                if i == self._hint:
                    self._pending -= take
                elif self._tree is not None:
                    self._add(i, -take)
            n -= take
            i += 1
            off = 0
        if emptied:
            chunks[:] = [piece for piece in chunks if piece]
            self._invalidate()  # rebuilt, without the empty chunks, on the next lookup
