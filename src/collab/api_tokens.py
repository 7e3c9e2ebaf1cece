"""The HTTP API for taking access back: list a document's links, revoke a token, lower its role.

* ``GET /api/docs/{doc}/links``: the share links minted for ``doc``;
* ``POST /api/tokens/revoke``: ``{"token": T}`` (a token, or a whole link
  carrying one) or ``{"id": ID}`` (a recorded link's id);
* ``POST /api/tokens/role``: the same, with ``"role": "read"``.

Who may: the caller's own token (``Authorization: Bearer``) must be allowed
to share the target's role and reach every document it names
(:func:`collab.tokens.may_manage`): the sharer, anyone holding an equal or
stronger token for the document, a token minted with the server's secret for
``*``, or the link itself. On an open server (no secret) there are no
tokens to revoke: 400.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import auth, protocol
from .httpbody import read_body
from .tokens import Grant

if TYPE_CHECKING:
    from .app import CollabApp

#: The largest body of a revoke or role request (a token or a link, and a few fields).
BODY_BYTES = 16384
_TOKEN_IN_LINK = re.compile(r"[#?&]token=([A-Za-z0-9_.-]+)")


def token_from_link(text: str) -> str:
    """The token in a link as the editor copies it (``…/d/doc#token=T``, or ``?token=T``), or ``text`` itself."""
    m = _TOKEN_IN_LINK.search(text)
    return m.group(1) if m else text.strip()


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def _body(request: Request) -> dict[str, Any] | JSONResponse:
    raw = await read_body(request, BODY_BYTES)
    if raw is None:
        return _error(413, protocol.TOO_LARGE, f"the body exceeds {BODY_BYTES} bytes")
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _error(400, "bad_request", 'send a JSON object: {"token": "..."} or {"id": "..."}')
    return body


async def _target(app: "CollabApp", body: dict[str, Any]) -> tuple[Grant, str | None] | JSONResponse:
    """The credential a request names: a token (or link) checked against the secret, or a recorded id."""
    secret = app.settings.secret
    token, cred_id = body.get("token"), body.get("id")
    if isinstance(token, str) and token:
        try:
            grant = auth.claims_unverified(secret, token_from_link(token))
        except auth.AuthError:
            return _error(400, "bad_request", "invalid token: it was not signed by this server's secret")
        if grant.jti is None:
            return _error(400, "bad_request", "this token has no id (minted by an older collab), so it cannot be "
                          "revoked alone: change COLLAB_SECRET to revoke every token")
        doc = grant.docs[0] if len(grant.docs) == 1 and protocol.valid_doc_name(grant.docs[0]) else None
        return grant, doc
    if isinstance(cred_id, str) and cred_id:
        assert app.store is not None
        cred = await app.store.get_credential(cred_id)
        if cred is None or cred.doc is None:
            return _error(404, "not_found", f"no link with id {cred_id!r} is recorded here: pass the token itself")
        return Grant(role=cred.role, docs=(cred.doc,), expires=cred.expires, jti=cred.id), cred.doc
    return _error(400, "bad_request", 'name the credential: {"token": "..."} (a token or a link) or {"id": "..."}')


def _caller(app: "CollabApp", request: Request) -> Grant:
    """The caller's grant, from its own token; 400 on an open server, 401 for a bad token."""
    if not app.settings.secret:
        raise HTTPException(400, "this server has no secret (COLLAB_SECRET), so no tokens or links to revoke")
    return app._grant(request, None)


async def _change(app: "CollabApp", request: Request, lower: bool) -> Response:
    caller = _caller(app, request)
    body = await _body(request)
    if isinstance(body, JSONResponse):
        return body
    if lower and body.get("role") != "read":
        return _error(400, "bad_request", 'a role can only be lowered: send "role": "read" (mint a new link to '
                      "give edit access back)")
    found = await _target(app, body)
    if isinstance(found, JSONResponse):
        return found
    target, doc = found
    if not auth.may_manage(caller, target):
        return _error(403, protocol.FORBIDDEN, "your token may not manage this credential: it must be allowed to "
                      f"share {target.role} links to every document the credential reaches")
    revocations = app.revocations
    cred = await (revocations.lower(target, doc) if lower else revocations.revoke(target, doc))
    return JSONResponse(cred.to_json(), headers={"Cache-Control": "no-store"})


async def revoke(app: "CollabApp", request: Request) -> Response:
    """``POST /api/tokens/revoke``."""
    return await _change(app, request, lower=False)


async def lower_role(app: "CollabApp", request: Request) -> Response:
    """``POST /api/tokens/role``."""
    return await _change(app, request, lower=True)


async def links(app: "CollabApp", request: Request) -> Response:
    """``GET /api/docs/{doc}/links``: the links minted for this document (never their tokens)."""
    doc = app._doc_param(request)
    grant = app._grant(request, doc)
    if not app.settings.secret:
        return JSONResponse([])
    if not grant.share:
        raise HTTPException(403, "this token may not share this document, so it may not list its links")
    assert app.store is not None
    return JSONResponse([c.to_json() for c in await app.store.doc_credentials(doc)], headers={"Cache-Control": "no-store"})
