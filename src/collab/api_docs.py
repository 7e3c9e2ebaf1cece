"""The HTTP API for a document's life: list, delete into the trash, restore, list the trash, title, rename.

* ``GET /api/docs?limit=N&after=POSITION``: a page of the documents the token reaches, newest first;
  ``Link: <...>; rel="next"`` names the next page while there is one;
* ``DELETE /api/docs/{doc}``: into the trash (an edit token for it);
* ``POST /api/trash/{doc}/restore``: out of the trash (an edit token for it);
* ``GET /api/trash``: what is in the trash, of what the token reaches;
* ``GET /api/docs/{doc}/title``: the title set by hand, if any (for the editor's tab);
* ``POST /api/docs/{doc}/title``: set the title, or go back to the first heading (editors are told);
* ``POST /api/docs/{doc}/rename``: a new name (an edit token for both); the old one redirects.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING

import orjson

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import protocol
from .api_tokens import BODY_BYTES
from .httpbody import read_body
from .lifecycle import DELETED_REASON, RENAMED_REASON
from .peer import announce_title
from .protocol import CLOSE_NO_DOCUMENT
from .store.base import ListPosition
from .titles import check_title

if TYPE_CHECKING:
    from .app import CollabApp


#: Rows in one page of ``GET /api/docs`` (its default and largest ``limit``).
DOCS_PAGE = 1000


def _bad_page(message: str) -> Response:
    return JSONResponse({"error": protocol.BAD_MESSAGE, "message": message}, status_code=400)


def encode_position(position: ListPosition) -> str:
    """An opaque ``after=`` for the page after ``position`` (URL-safe)."""
    return base64.urlsafe_b64encode(orjson.dumps([position.updated, position.id])).rstrip(b"=").decode()


def decode_position(raw: str) -> ListPosition:
    """What :func:`encode_position` made; ``ValueError`` for anything else."""
    try:
        updated, doc = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
        raise ValueError("not a page position") from None
    if not isinstance(updated, (int, float)) or isinstance(updated, bool) or not isinstance(doc, str):
        raise ValueError("not a page position")
    return ListPosition(float(updated), doc)


async def list_docs(app: "CollabApp", request: Request) -> Response:
    """``GET /api/docs``: a page of the documents the token reaches, newest first, each with the token's role.

    The store is read a page at a time, so a token that reaches few of many
    documents costs reads, never memory beyond one page.
    """
    grant = app._grant(request, None)
    raw_limit, raw_after = request.query_params.get("limit"), request.query_params.get("after")
    if raw_limit is not None and not (raw_limit.isdigit() and 1 <= int(raw_limit) <= DOCS_PAGE):
        return _bad_page(f"limit={raw_limit!r} must be a whole number from 1 to {DOCS_PAGE}")
    limit = DOCS_PAGE if raw_limit is None else int(raw_limit)
    try:
        position = None if raw_after is None else decode_position(raw_after)
    except ValueError:
        return _bad_page(f"after={raw_after!r} is not a position this server gave: "
                         "start again from the first page (no after=)")
    assert app.store is not None
    if position is None:
        await app.record_headings()
    rows: list[dict] = []
    more = True
    while more and len(rows) < limit:
        page = await app.store.list_docs(limit, position)
        more = len(page) == limit
        for i, info in enumerate(page):
            position = ListPosition.of(info)
            if grant.allows(info.id):
                rows.append(dict(info.to_json(), role=grant.role))
                if len(rows) == limit:
                    more = more or i + 1 < len(page)
                    break
    headers = {}
    if more and position is not None:
        root = request.scope.get("root_path", "")
        headers["Link"] = f'<{root}/api/docs?limit={limit}&after={encode_position(position)}>; rel="next"'
    return JSONResponse(rows, headers=headers)


def _editor(app: "CollabApp", request: Request) -> str:
    """The document of the request, for a caller who may edit it (else 403)."""
    doc = app._doc_param(request)
    if app._grant(request, doc).role != "edit":
        raise HTTPException(403, "this token is read-only: it may not delete or restore the document")
    return doc


async def delete(app: "CollabApp", request: Request) -> Response:
    """``DELETE /api/docs/{doc}``: its editors are closed with 4004, and it is purged after ``COLLAB_TRASH_DAYS``."""
    doc = _editor(app, request)
    assert app.hub is not None
    open_doc = app.hub.docs.get(doc)
    if open_doc is not None and len(open_doc.text):  # the trash lists it by title: record its first heading now
        await app._record_heading(doc, open_doc.text)
    when = await app.trash.delete(doc)
    if when is None:
        if app.trash.is_deleted(doc):
            raise HTTPException(404, f"document {doc!r} is already in the trash")
        raise HTTPException(404, f"no document {doc!r}: a name with no edit has nothing to delete")
    return JSONResponse({"id": doc, "deleted": when, "purge_at": app.trash.purge_at(when)})


async def restore(app: "CollabApp", request: Request) -> Response:
    """``POST /api/trash/{doc}/restore``."""
    doc = _editor(app, request)
    if not await app.trash.restore(doc):
        raise HTTPException(404, f"document {doc!r} is not in the trash (never deleted, or already purged)")
    assert app.hub is not None
    rev, _ = await app.hub.read(doc)
    return JSONResponse({"id": doc, "rev": rev})


async def trash(app: "CollabApp", request: Request) -> Response:
    """``GET /api/trash``: ``[{"id","rev","size","bytes","updated","title","deleted","purge_at","role"}]``,
    most recently deleted first (``role``: what the caller's token grants, so a page offers only what works)."""
    grant = app._grant(request, None)
    rows = [dict(d.to_json(), purge_at=app.trash.purge_at(d.deleted or 0.0), role=grant.role)
            for d in await app.trash.listing() if grant.allows(d.id)]
    return JSONResponse(rows, headers={"Cache-Control": "no-store"})


async def _json(request: Request) -> dict:
    """The request's JSON object body (400 otherwise, 413 above :data:`BODY_BYTES`)."""
    raw = await read_body(request, BODY_BYTES)
    if raw is None:
        raise HTTPException(413, f"the body exceeds {BODY_BYTES} bytes")
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise HTTPException(400, "send a JSON object")
    return body


async def set_title(app: "CollabApp", request: Request) -> Response:
    """``POST /api/docs/{doc}/title``: ``{"title": T}`` sets it, ``{"title": null}`` goes back to the first heading."""
    doc = _editor(app, request)
    if app.trash.is_deleted(doc):
        raise HTTPException(404, DELETED_REASON)
    body = await _json(request)
    try:
        title = check_title(body.get("title"))
    except ValueError as exc:
        return JSONResponse({"error": "bad_request", "message": str(exc)}, status_code=400)
    assert app.store is not None
    if not await app.store.set_title(doc, title):
        raise HTTPException(404, f"no document {doc!r}: give it some text before a title")
    _announce_title(app, doc, title)
    if title is None:  # the first heading stands in
        title = await app.heading(doc)
    return JSONResponse({"id": doc, "title": title})


async def get_title(app: "CollabApp", request: Request) -> Response:
    """``GET /api/docs/{doc}/title``: ``{"id","title"}``, the title set by hand or ``null`` (a read token is enough)."""
    doc, _ = app._live_doc(request)
    assert app.store is not None
    return JSONResponse({"id": doc, "title": await app.store.title(doc)}, headers={"Cache-Control": "no-store"})


def _announce_title(app: "CollabApp", doc: str, title: str | None) -> None:
    """Send ``{"type":"title"}`` to the document's editors here, and through the backplane to other processes'."""
    assert app.hub is not None
    open_doc = app.hub.docs.get(doc)
    if open_doc is not None:
        announce_title(open_doc.peers.values(), title)
    if app.hub.backplane is not None:
        app.hub.backplane.publish(doc, {"t": "title", "title": title})


async def rename(app: "CollabApp", request: Request) -> Response:
    """``POST /api/docs/{doc}/rename``: ``{"name": NEW}``; editors are closed with 4004 ``document renamed to NEW``."""
    old = _editor(app, request)
    body = await _json(request)
    new = body.get("name")
    if not isinstance(new, str) or not protocol.valid_doc_name(new):
        return JSONResponse({"error": "bad_request", "message": 'send {"name": NEW}, 1-128 of A-Z a-z 0-9 . _ - '
                             "not starting with '.'"}, status_code=400)
    if app._grant(request, new).role != "edit":
        raise HTTPException(403, "this token may not edit the new name")
    if new == old:
        return JSONResponse({"error": "bad_request", "message": "the new name is the current one"}, status_code=400)
    assert app.hub is not None and app.store is not None
    revs = await app.store.revisions([old, new])
    if app.trash.is_deleted(old) or not revs.get(old):
        raise HTTPException(404, f"no document {old!r} to rename (no edits yet, or in the trash)")
    if app.trash.is_deleted(new) or revs.get(new):
        return _taken(new)
    open_doc = app.hub.docs.get(old)
    if open_doc is not None:  # no edit may land on the old name once it moves: close its editors first
        open_doc.kick_all(CLOSE_NO_DOCUMENT, RENAMED_REASON + new)
        await open_doc.settle()  # what was acknowledged is in the store before it moves
        app.hub.drop(open_doc)
    result = await app.trash.rename(old, new)
    if result == "missing":
        raise HTTPException(404, f"no document {old!r} to rename (no edits yet, or in the trash)")
    if result == "taken":
        return _taken(new)
    return JSONResponse({"id": new, "renamed_from": old})


def _taken(new: str) -> JSONResponse:
    return JSONResponse({"error": "conflict", "message": f"{new!r} is taken (it has edits, or is in the trash): "
                         "choose another name, or delete it first"}, status_code=409)
