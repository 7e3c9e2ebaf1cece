"""A store that keeps everything in memory: for tests and benchmarks only."""

from __future__ import annotations

import bisect
import dataclasses
import time

from .. import ot
from . import history as h
from .base import Credential, DocInfo, DocState, ListPosition, RevisionConflict, Store, StoredOp


class MemoryStore(Store):
    """Holds ops, snapshots, checkpoints and sessions in dicts; nothing survives the process."""

    def __init__(self, history_depth: int = 1000, session_gap: float = h.SESSION_GAP) -> None:
        self.history_depth = history_depth
        self.session_gap = session_gap
        #: Every op from revision 1 (``ops[rev - 1]``); ``None`` where history was thinned.
        self._ops: dict[str, list[StoredOp | None]] = {}
        self._snapshots: dict[str, tuple[int, str]] = {}
        #: Checkpoints: revisions ascending, and the text and authorship runs at each.
        self._checkpoints: dict[str, tuple[list[int], list[str], list[h.Runs | None]]] = {}
        #: Editing sessions, through the commits counted so far (see :meth:`_sessions_of`).
        self._sessions: dict[str, list[h.Session]] = {}
        #: The first revision of each commit not yet counted into its document's sessions.
        self._uncounted: dict[str, list[int]] = {}
        self._ids: dict[str, dict[str, int]] = {}
        self._info: dict[str, DocInfo] = {}
        self._authorship = h.AuthorshipCache()
        self._creds: dict[str, Credential] = {}
        self._deleted: dict[str, float] = {}
        self._titles: dict[str, str] = {}
        self._headings: dict[str, str] = {}
        self._renames: dict[str, str] = {}
        self._seq = 0

    async def load(self, doc: str, history_depth: int) -> DocState:
        rev, text = self._snapshots.get(doc, (0, ""))
        ops = self._ops.get(doc, [])
        for entry in ops[rev:]:
            assert entry is not None, "thinning never reaches past the snapshot"
            text = ot.apply(text, entry.op)
            rev = entry.rev
        return DocState(rev, text, [o for o in ops[max(0, rev - history_depth):] if o is not None])

    async def append(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None = None,
                     nbytes: int | None = None) -> None:
        log = self._ops.setdefault(doc, [])
        if ops[0].rev != len(log) + 1:
            raise RevisionConflict(f"{doc}: expected rev {len(log) + 1}, got {ops[0].rev}")
        now = h.now()
        ids = self._ids.setdefault(doc, {})
        for entry in ops:
            entry.time = now
            ids[entry.id] = entry.rev
        log.extend(ops)
        self._uncounted.setdefault(doc, []).append(ops[0].rev)
        if snapshot is not None:
            self._snapshots[doc] = snapshot
            revs, texts, runs = self._checkpoints.setdefault(doc, ([], [], []))
            if h.checkpoint_due(revs[-1] if revs else 0, snapshot[0], len(snapshot[1])):
                at = self._checkpoint_runs(doc, snapshot[0], len(snapshot[1]))
                revs.append(snapshot[0])
                texts.append(snapshot[1])
                runs.append(at)
        self._info[doc] = DocInfo(doc, ops[-1].rev, size, time.time(), nbytes=nbytes)

    def _checkpoint_runs(self, doc: str, rev: int, length: int) -> h.Runs:
        """The authorship at a new checkpoint at ``rev``: the previous checkpoint's moved by the ops since."""
        revs, _, kept = self._checkpoints.get(doc, ([], [], []))
        base, runs = (revs[-1], kept[-1]) if revs and kept[-1] is not None else (0, [])
        between = self._ops[doc][base:rev]
        if None in between:
            return self._runs_at(doc, rev)
        known = h.sole_runs(runs, between, length)
        return known if known is not None else h.move_runs(runs, between)

    async def find_op(self, doc: str, op_id: str) -> int | None:
        return self._ids.get(doc, {}).get(op_id)

    async def find_ops(self, doc: str, op_ids: list[str]) -> dict[str, int]:
        ids = self._ids.get(doc, {})
        return {i: rev for i in op_ids if (rev := ids.get(i)) is not None}

    async def ops_since(self, doc: str, rev: int) -> list[StoredOp]:
        return [o for o in self._ops.get(doc, [])[rev:] if o is not None]

    def _titled(self, info: DocInfo, deleted: float | None = None) -> DocInfo:
        title = self._titles.get(info.id) or self._headings.get(info.id)
        return dataclasses.replace(info, title=title, deleted=deleted)

    async def list_docs(self, limit: int | None = None, after: ListPosition | None = None) -> list[DocInfo]:
        live = [self._titled(d) for d in self._info.values() if d.id not in self._deleted]
        live.sort(key=lambda d: d.id)
        live.sort(key=lambda d: d.updated, reverse=True)
        if after is not None:
            live = [d for d in live if d.updated < after.updated or (d.updated == after.updated and d.id > after.id)]
        return live if limit is None else live[:limit]

    # -- history ----------------------------------------------------------------

    def _base(self, doc: str, rev: int) -> tuple[int, str, h.Runs | None]:
        """The nearest checkpoint (or snapshot) at or before ``rev``: revision, text, runs if kept."""
        best: tuple[int, str, h.Runs | None] = (0, "", [])
        revs, texts, runs = self._checkpoints.get(doc, ([], [], []))
        i = bisect.bisect_right(revs, rev)
        if i:
            best = (revs[i - 1], texts[i - 1], runs[i - 1])
        snap = self._snapshots.get(doc)
        if snap is not None and best[0] < snap[0] <= rev:
            best = (snap[0], snap[1], None)
        return best

    def _between(self, doc: str, base: int, rev: int) -> list[StoredOp]:
        return [o for o in self._ops.get(doc, [])[base:rev] if o is not None]

    async def text_at(self, doc: str, rev: int) -> str:
        h.check_rev(doc, rev, len(self._ops.get(doc, [])))
        base, text, _ = self._base(doc, rev)
        return h.rebuild(doc, base, text, self._between(doc, base, rev), rev)

    def _sessions_of(self, doc: str) -> list[h.Session]:
        """``doc``'s editing sessions, its commits since the last call counted in first.

        Counted when read rather than on every commit: the same sessions (each
        commit's ops share its time), and a commit costs the hub no more than
        stamping its time.
        """
        sessions = self._sessions.setdefault(doc, [])
        starts = self._uncounted.pop(doc, None)
        if starts:
            log = self._ops[doc]
            last = sessions[-1] if sessions else None
            for first, end in zip(starts, starts[1:] + [len(log) + 1]):
                ops: list[StoredOp] = log[first - 1 : end - 1]  # type: ignore[assignment]  (never thinned yet)
                authors = [h.label(o.name, o.client) for o in ops]
                opened, _ = h.advance(last, ops, authors, ops[0].time, self.session_gap, in_place=True)
                if opened is not last:
                    sessions.append(opened)
                    last = opened
        return sessions

    async def sessions(self, doc: str, before: int | None = None, limit: int = 50) -> list[h.Session]:
        h.check_rev(doc, 0, len(self._ops.get(doc, [])))
        return h.page(self._sessions_of(doc), before, limit)

    async def authorship(self, doc: str, rev: int | None = None) -> list[dict]:
        head = len(self._ops.get(doc, []))
        rev = head if rev is None else rev
        h.check_rev(doc, rev, head)
        return h.spans(self._runs_at(doc, rev))

    def _runs_at(self, doc: str, rev: int) -> h.Runs:
        base, runs = self._authorship.nearest(doc, rev)
        revs, _, kept = self._checkpoints.get(doc, ([], [], []))
        for r, k in zip(revs, kept):
            if base < r <= rev and k is not None:
                base, runs = r, k
        return self._authorship.replay(doc, base, runs, self._between(doc, base, rev), rev)

    async def thin(self, before: float) -> int:
        thinned = 0
        for doc in list(self._uncounted):
            self._sessions_of(doc)
        for doc, sessions in self._sessions.items():
            head = len(self._ops[doc])
            bound = min(self._snapshots.get(doc, (0, ""))[0], head - self.history_depth)
            for k, s in enumerate(sessions[:-1]):
                if s not in h.thinnable([s], before, bound):
                    continue
                text, runs = await self.text_at(doc, s.last), self._runs_at(doc, s.last)
                revs, texts, kept = self._checkpoints.setdefault(doc, ([], [], []))
                i = bisect.bisect_left(revs, s.first)
                j = bisect.bisect_right(revs, s.last)
                revs[i:j], texts[i:j], kept[i:j] = [s.last], [text], [runs]
                log = self._ops[doc]
                log[s.first - 1 : s.last] = [None] * (s.last - s.first + 1)
                sessions[k] = h.Session(s.first, s.last, s.start, s.end, s.authors, s.inserted, s.deleted, True)
                self._authorship.forget(doc)
                thinned += 1
        return thinned

    async def set_deleted(self, doc: str, when: float | None) -> bool:
        if doc not in self._info or (doc in self._deleted) == (when is not None):
            return False
        if when is None:
            del self._deleted[doc]
        else:
            self._deleted[doc] = when
        return True

    async def trash(self) -> list[DocInfo]:
        rows = [self._titled(self._info[d], t) for d, t in self._deleted.items()]
        return sorted(rows, key=lambda d: d.deleted or 0, reverse=True)

    async def purge(self, deleted_before: float, keep: set[str]) -> list[str]:
        gone = [d for d, t in self._deleted.items() if t < deleted_before and d not in keep]
        for doc in gone:
            for table in (self._ops, self._snapshots, self._ids, self._info, self._deleted, self._titles,
                          self._headings, self._checkpoints, self._sessions, self._uncounted):
                table.pop(doc, None)
            self._authorship.forget(doc)
            for cred in [c for c in self._creds.values() if c.doc == doc]:
                del self._creds[cred.id]
        return gone

    async def put_credential(self, cred: Credential) -> Credential:
        self._seq += 1
        cred = self._creds[cred.id] = dataclasses.replace(cred, seq=self._seq)
        return cred

    async def get_credential(self, cred_id: str) -> Credential | None:
        return self._creds.get(cred_id)

    async def doc_credentials(self, doc: str) -> list[Credential]:
        return sorted((c for c in self._creds.values() if c.doc == doc), key=lambda c: (c.issued, c.id))

    async def credential_changes(self, after_seq: int) -> list[Credential]:
        return sorted((c for c in self._creds.values() if c.seq > after_seq), key=lambda c: c.seq)

    async def prune_credentials(self, expired_before: float) -> int:
        gone = [c.id for c in self._creds.values() if c.expires is not None and c.expires < expired_before]
        for cred_id in gone:
            del self._creds[cred_id]
        return len(gone)

    async def set_title(self, doc: str, title: str | None) -> bool:
        if doc not in self._info:
            return False
        if title is None:
            self._titles.pop(doc, None)
        else:
            self._titles[doc] = title
        return True

    async def title(self, doc: str) -> str | None:
        return self._titles.get(doc)

    async def heading(self, doc: str) -> str | None:
        return self._headings.get(doc)

    async def set_heading(self, doc: str, heading: str | None) -> None:
        if doc in self._info:
            if heading is None:
                self._headings.pop(doc, None)
            else:
                self._headings[doc] = heading

    async def rename(self, old: str, new: str) -> str:
        if old not in self._info or old in self._deleted:
            return "missing"
        if new in self._info:
            return "taken"
        for table in (self._ops, self._snapshots, self._ids, self._titles, self._headings, self._checkpoints,
                      self._sessions, self._uncounted):
            if old in table:
                table[new] = table.pop(old)  # type: ignore[index]
        self._authorship.forget(old)
        self._info[new] = dataclasses.replace(self._info.pop(old), id=new)
        for cred in [c for c in self._creds.values() if c.doc == old]:
            self._creds[cred.id] = dataclasses.replace(cred, doc=new)
        self._renames = {o: (new if n == old else n) for o, n in self._renames.items() if o != new}
        self._renames[old] = new
        return "ok"

    async def renames(self) -> dict[str, str]:
        return dict(self._renames)
