"""What the hub's parts share: its settings, its counters, and the error of a failed document."""

from __future__ import annotations

from dataclasses import dataclass


class DocumentFailed(Exception):
    """The document hit a storage error and was dropped from memory; load it again."""


@dataclass
class HubConfig:
    """The hub's share of :class:`collab.config.Settings`."""

    history_depth: int = 1000
    snapshot_every: int = 1000
    max_doc_chars: int = 10_000_000
    queue_size: int = 1000
    idle_unload_seconds: float = 30.0
    #: The transport's frame limit, announced in ``welcome`` so clients split larger edits.
    max_message_bytes: int = 4 * 1024 * 1024
    #: Bytes a peer's outbox may hold (beyond its ``welcome``) before it is dropped as too slow.
    queue_bytes: int = 8 * 1024 * 1024
    #: Submits a document's inbox holds; beyond, ``offer`` declines and ``submit`` waits for room.
    inbox_size: int = 1024

    @classmethod
    def from_settings(cls, s) -> "HubConfig":
        return cls(
            s.history_depth, s.snapshot_every, s.max_doc_chars, s.client_queue_size, s.idle_unload_seconds,
            s.max_message_bytes, s.client_queue_bytes, s.doc_inbox_size,
        )


@dataclass
class HubCounters:
    """Process-wide counts behind ``/metrics``."""

    #: Operations committed by this process.
    ops_applied: int = 0
    #: Batches that lost their revisions to another process and were retried.
    conflicts: int = 0
    #: Operations of other processes integrated here.
    remote_applied: int = 0
    #: Of those, operations applied from a sealed announcement (no read of the store).
    remote_sealed: int = 0
