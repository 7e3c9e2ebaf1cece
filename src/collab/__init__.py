"""collab: a self-hostable real-time collaborative text editor.

The layers, innermost first: :mod:`collab.ot` (pure operations),
:mod:`collab.protocol` (messages), :mod:`collab.hub` (per-document sessions),
:mod:`collab.store` and :mod:`collab.backplane` (persistence and fan-out),
:mod:`collab.guard` (flood protection), then :mod:`collab.app` (Starlette),
:mod:`collab.server` and :mod:`collab.cli`.  The Python client is
:mod:`collab.clientstate` (the sans-I/O state machine, with
:mod:`collab.clientevents` and :mod:`collab.opsplit`) driven over a
WebSocket by :mod:`collab.client` (:func:`connect`).
"""

__version__ = "0.1.0"


def connect(url: str, doc: str, **kwargs):  # pragma: no cover - thin re-export
    """Open a collaborative document; see :func:`collab.client.connect`."""
    from .client import connect as _connect

    return _connect(url, doc, **kwargs)
