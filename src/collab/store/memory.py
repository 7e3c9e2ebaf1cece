"""A store that keeps everything in memory: for tests and benchmarks only."""

from __future__ import annotations

import dataclasses
import time

from .. import ot
from .base import Credential, DocInfo, DocState, RevisionConflict, Store, StoredOp


class MemoryStore(Store):
    """Holds ops and snapshots in dicts; nothing survives the process."""

    def __init__(self, history_depth: int = 1000) -> None:
        self.history_depth = history_depth
        self._ops: dict[str, list[StoredOp]] = {}
        self._snapshots: dict[str, tuple[int, str]] = {}
        self._ids: dict[str, dict[str, int]] = {}
        self._info: dict[str, DocInfo] = {}
        self._creds: dict[str, Credential] = {}
        self._deleted: dict[str, float] = {}
        self._titles: dict[str, str] = {}
        self._headings: dict[str, str] = {}
        self._renames: dict[str, str] = {}
        self._seq = 0

    async def load(self, doc: str, history_depth: int) -> DocState:
        rev, text = self._snapshots.get(doc, (0, ""))
        ops = self._ops.get(doc, [])
        for entry in ops:
            if entry.rev > rev:
                text = ot.apply(text, entry.op)
                rev = entry.rev
        return DocState(rev, text, [o for o in ops if o.rev > rev - history_depth])

    async def append(self, doc: str, ops: list[StoredOp], size: int, snapshot: tuple[int, str] | None = None) -> None:
        log = self._ops.setdefault(doc, [])
        last = log[-1].rev if log else self._snapshots.get(doc, (0, ""))[0]
        if ops[0].rev != last + 1:
            raise RevisionConflict(f"{doc}: expected rev {last + 1}, got {ops[0].rev}")
        log.extend(ops)
        ids = self._ids.setdefault(doc, {})
        for entry in ops:
            ids[entry.id] = entry.rev
        if snapshot is not None:
            self._snapshots[doc] = snapshot
            keep_after = min(snapshot[0], ops[-1].rev - self.history_depth)
            del log[: max(0, keep_after - log[0].rev + 1)]  # the log holds consecutive revisions
        self._info[doc] = DocInfo(doc, ops[-1].rev, size, time.time())

    async def find_op(self, doc: str, op_id: str) -> int | None:
        return self._ids.get(doc, {}).get(op_id)

    async def find_ops(self, doc: str, op_ids: list[str]) -> dict[str, int]:
        ids = self._ids.get(doc, {})
        return {i: rev for i in op_ids if (rev := ids.get(i)) is not None}

    async def ops_since(self, doc: str, rev: int) -> list[StoredOp]:
        return [o for o in self._ops.get(doc, []) if o.rev > rev]

    def _titled(self, info: DocInfo, deleted: float | None = None) -> DocInfo:
        title = self._titles.get(info.id) or self._headings.get(info.id)
        return dataclasses.replace(info, title=title, deleted=deleted)

    async def list_docs(self) -> list[DocInfo]:
        live = (self._titled(d) for d in self._info.values() if d.id not in self._deleted)
        return sorted(live, key=lambda d: d.updated, reverse=True)

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
            for table in (self._ops, self._snapshots, self._ids, self._info, self._deleted, self._titles, self._headings):
                table.pop(doc, None)
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
        for table in (self._ops, self._snapshots, self._ids, self._titles, self._headings):
            if old in table:
                table[new] = table.pop(old)  # type: ignore[index]
        self._info[new] = dataclasses.replace(self._info.pop(old), id=new)
        for cred in [c for c in self._creds.values() if c.doc == old]:
            self._creds[cred.id] = dataclasses.replace(cred, doc=new)
        self._renames = {o: (new if n == old else n) for o, n in self._renames.items() if o != new}
        self._renames[old] = new
        return "ok"

    async def renames(self) -> dict[str, str]:
        return dict(self._renames)
