"""The HTTP API for a document's life: delete into the trash, restore, list the trash.

* ``DELETE /api/docs/{doc}``: into the trash (an edit token for it);
* ``POST /api/docs/{doc}/restore``: out of the trash (an edit token for it);
* ``GET /api/trash``: what is in the trash, of what the token reaches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from .app import CollabApp


def _editor(app: "CollabApp", request: Request) -> str:
    """The document of the request, for a caller who may edit it (else 403)."""
    doc = app._doc_param(request)
    if app._grant(request, doc).role != "edit":
        raise HTTPException(403, "this token is read-only: it may not delete or restore the document")
    return doc


async def delete(app: "CollabApp", request: Request) -> Response:
    """``DELETE /api/docs/{doc}``: its editors are closed with 4004, and it is purged after ``COLLAB_TRASH_DAYS``."""
    doc = _editor(app, request)
    when = await app.trash.delete(doc)
    if when is None:
        if app.trash.is_deleted(doc):
            raise HTTPException(404, f"document {doc!r} is already in the trash")
        raise HTTPException(404, f"no document {doc!r}: a name with no edit has nothing to delete")
    return JSONResponse({"id": doc, "deleted": when, "purge_at": app.trash.purge_at(when)})


async def restore(app: "CollabApp", request: Request) -> Response:
    """``POST /api/docs/{doc}/restore``."""
    doc = _editor(app, request)
    if not await app.trash.restore(doc):
        raise HTTPException(404, f"document {doc!r} is not in the trash (never deleted, or already purged)")
    assert app.hub is not None
    rev, _ = await app.hub.read(doc)
    return JSONResponse({"id": doc, "rev": rev})


async def trash(app: "CollabApp", request: Request) -> Response:
    """``GET /api/trash``: ``[{"id","rev","size","updated","deleted","purge_at"}]``, most recently deleted first."""
    grant = app._grant(request, None)
    rows = [dict(d.to_json(), purge_at=app.trash.purge_at(d.deleted or 0.0))
            for d in await app.trash.listing() if grant.allows(d.id)]
    return JSONResponse(rows, headers={"Cache-Control": "no-store"})
