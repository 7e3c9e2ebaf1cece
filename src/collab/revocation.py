"""Taking access back: revoked tokens and lowered roles, enforced on new requests and open sessions.

Tokens are signed and carry their own expiry, so a server could not forget
one it issued; each carries an id (``jti``, see :mod:`collab.tokens`), and
the store keeps a :class:`~collab.store.base.Credential` row per id that
was recorded (every share link the server mints) or changed (revoked, or
its role lowered to read). :class:`Revocations` holds those rows in memory,
so checking a request costs a dict lookup, and knows the open sessions of
each id, so that a change reaches them at once:

* revoked: every session using it is closed with 4001 ``this link was
  revoked``; new requests with it get 401 / 4001;
* role lowered to read: every edit session using it is made read-only and
  closed with 1012, so its client reconnects and is welcomed as ``read``;
* expired (the token's ``exp`` passes while connected): closed with 4001
  ``token expired`` (:func:`expiry_timer`).

With a store shared by several processes (PostgreSQL) each process reads
the rows changed since its last look every :data:`POLL_SECONDS`, so a
revocation made through one process reaches the sessions of every other
one within that time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Callable, Protocol

from .chores import Chores
from .protocol import CLOSE_BAD_TOKEN
from .store.base import Credential, Store
from .tokens import AuthError, Grant

log = logging.getLogger("collab.revocation")

#: Seconds between two reads of the changed credentials when the store is shared by processes.
POLL_SECONDS = 0.25
#: Seconds between two prunings of credentials long expired.
PRUNE_SECONDS = 3600.0
REVOKED_REASON = "this link was revoked: ask for a new one"
EXPIRED_REASON = "token expired: ask for a new link"
LOWERED_REASON = "your access changed to read-only: reconnect"


class Holder(Protocol):
    """A connection using a credential: it can be closed, or made read-only."""

    def revoke_access(self, code: int, reason: str) -> None: ...

    def lower_role(self, role: str, reason: str) -> None: ...


class Revocations:
    """The credentials this process knows to be revoked or lowered, and the sessions using each id."""

    def __init__(self, store: Store | None) -> None:
        #: Set before :meth:`start` (the app opens its store in its lifespan).
        self.store: Store = store  # type: ignore[assignment]
        self.state: dict[str, Credential] = {}
        self.seq = 0
        self.holders: dict[str, set[Holder]] = {}
        self._chores = Chores(log)

    async def start(self) -> None:
        """Read every recorded change; with a shared store, keep reading new ones; prune expired rows hourly."""
        await self.prune()
        await self.refresh()
        self._chores.every(PRUNE_SECONDS, self.prune, "pruning expired credentials", "collab-prune")
        if self.store.may_conflict:
            self._chores.every(POLL_SECONDS, self.refresh, "reading the changed credentials", "collab-revocations")

    async def close(self) -> None:
        await self._chores.close()

    async def prune(self, now: float | None = None) -> int:
        """Forget credentials expired for over a day: their tokens are refused by their own ``exp``."""
        cutoff = (time.time() if now is None else now) - 86400.0
        for cred_id in [c.id for c in self.state.values() if c.expires is not None and c.expires < cutoff]:
            del self.state[cred_id]
        return await self.store.prune_credentials(cutoff)

    async def refresh(self) -> None:
        """Take in the rows changed since the last look (by any process)."""
        for cred in await self.store.credential_changes(self.seq):
            self.apply(cred)

    # -- checks ----------------------------------------------------------------------

    def check(self, grant: Grant) -> Grant:
        """``grant`` as it stands now: refused (401 / 4001) if revoked, read-only if lowered."""
        cred = self.state.get(grant.jti) if grant.jti is not None else None
        if cred is None:
            return grant
        if cred.revoked is not None:
            raise AuthError(CLOSE_BAD_TOKEN, 401, "token revoked: this link was revoked; ask for a new one")
        if cred.role == "read" and grant.role != "read":
            return dataclasses.replace(grant, role="read")
        return grant

    # -- changes ------------------------------------------------------------------------

    def apply(self, cred: Credential) -> None:
        """Record a changed row and bring the sessions using it in line."""
        self.seq = max(self.seq, cred.seq)
        if cred.revoked is None and cred.role == "edit":
            self.state.pop(cred.id, None)  # a recorded link, unchanged: nothing to enforce
            return
        self.state[cred.id] = cred
        for holder in list(self.holders.get(cred.id, ())):
            if cred.revoked is not None:
                holder.revoke_access(CLOSE_BAD_TOKEN, REVOKED_REASON)
            else:
                holder.lower_role(cred.role, LOWERED_REASON)

    async def record(self, cred: Credential) -> Credential:
        """Store ``cred`` durably, then enforce it here (other processes read it within :data:`POLL_SECONDS`)."""
        stored = await self.store.put_credential(cred)
        self.apply(stored)
        return stored

    async def revoke(self, target: Grant, doc: str | None) -> Credential:
        """Revoke ``target`` (a verified grant with an id) for good."""
        assert target.jti is not None
        known = await self.store.get_credential(target.jti)
        base = known or Credential(target.jti, doc, target.role, time.time(), target.expires)
        if base.revoked is not None:
            return base
        return await self.record(dataclasses.replace(base, revoked=time.time()))

    async def lower(self, target: Grant, doc: str | None) -> Credential:
        """Make ``target`` read-only from now on (one way: mint a new link to give edit back)."""
        assert target.jti is not None
        known = await self.store.get_credential(target.jti)
        base = known or Credential(target.jti, doc, target.role, time.time(), target.expires)
        if base.role == "read":
            return base
        return await self.record(dataclasses.replace(base, role="read"))

    # -- who uses what --------------------------------------------------------------------

    def hold(self, jti: str | None, holder: Holder) -> None:
        if jti is not None:
            self.holders.setdefault(jti, set()).add(holder)

    def release(self, jti: str | None, holder: Holder) -> None:
        if jti is None:
            return
        held = self.holders.get(jti)
        if held is not None:
            held.discard(holder)
            if not held:
                del self.holders[jti]

    def sessions(self, jti: str) -> int:
        """How many open sessions of this process use ``jti``."""
        return len(self.holders.get(jti, ()))


def expiry_timer(grant: Grant, expire: Callable[[], Any]) -> asyncio.TimerHandle | None:
    """Call ``expire()`` when ``grant``'s token expires (none for a token without expiry)."""
    if grant.expires is None:
        return None
    loop = asyncio.get_running_loop()
    return loop.call_later(max(0.0, grant.expires - time.time()), expire)


__all__ = ["EXPIRED_REASON", "LOWERED_REASON", "POLL_SECONDS", "REVOKED_REASON", "Holder",
           "Revocations", "expiry_timer"]
