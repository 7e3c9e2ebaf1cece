"""Signed access tokens: minting, verifying, the grant they carry, share links.

Sans-I/O like :mod:`collab.protocol`: nothing here touches a socket. The
server calls :func:`authorize` on every WebSocket handshake and HTTP API
request and :func:`share` for ``POST /api/docs/{doc}/share``; ``collab
token`` calls :func:`mint_token`. ``docs/security.md`` explains the choices
to operators.

Tokens are JSON Web Tokens signed with HS256 by PyJWT using
``COLLAB_SECRET`` as the key, so any language's JWT library can mint them.
Claims::

    {"aud": "collab",            # required: keeps other JWTs signed with the same secret out
     "docs": ["notes", "team-*"], # required: exact names or globs (* and ?)
     "role": "edit" | "read",     # required
     "share": true,               # optional, default true: may mint share links
     "name": "Ada",               # optional display name
     "iat": 1700000000,           # optional, issued at
     "exp": 1700604800,           # optional: a token without exp never expires
     "jti": "3q2-7wEX..."}        # optional: the token's id, which revocation names

Tokens minted here always carry a ``jti``; a server refuses a token whose
id was revoked (:mod:`collab.revocation`), and may lower its role.

Without a secret the server is *open*: everyone may edit every document
(:data:`OPEN_GRANT`) and tokens are ignored.
"""

from __future__ import annotations

import functools
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Iterable

import jwt

from .protocol import CLOSE_BAD_TOKEN, CLOSE_NOT_ALLOWED, DOC_NAME_CHARS

__all__ = [
    "ALGORITHM",
    "AUDIENCE",
    "AuthError",
    "CLOSE_BAD_TOKEN",
    "CLOSE_NOT_ALLOWED",
    "DEFAULT_SHARE_TTL",
    "DEFAULT_TTL",
    "Grant",
    "LEEWAY_SECONDS",
    "MAX_DISPLAY_NAME",
    "MAX_PATTERNS",
    "MAX_TOKEN_CHARS",
    "MIN_SECRET_BYTES",
    "OPEN_GRANT",
    "ROLES",
    "ShareLink",
    "authorize",
    "check_secret",
    "claims_unverified",
    "extract_token",
    "may_manage",
    "mint_token",
    "parse_ttl",
    "parse_ttl_optional",
    "share",
    "valid_pattern",
    "verify_token",
    "visible_docs",
]

ALGORITHM = "HS256"
#: The ``aud`` claim every collab token carries and every check requires.
AUDIENCE = "collab"
ROLES = ("edit", "read")
#: Default lifetime of a minted token (``collab token`` without ``--ttl``).
DEFAULT_TTL = 7 * 86400.0
#: Default lifetime of a share link; never longer than the sharer's own token.
DEFAULT_SHARE_TTL = 7 * 86400.0
#: Clock skew tolerated between the minting host and the server, in seconds.
LEEWAY_SECONDS = 10.0
#: RFC 7518 section 3.2: an HS256 key must be at least as long as the hash (256 bits).
MIN_SECRET_BYTES = 32
#: Longer tokens are refused before any parsing (a token names a few patterns).
MAX_TOKEN_CHARS = 8192
MAX_PATTERNS = 256
MAX_DISPLAY_NAME = 64

_DOC_CHAR = f"[{DOC_NAME_CHARS}]"
_PATTERN_RE = re.compile(f"[*?{DOC_NAME_CHARS}]{{1,128}}")
_GENERATE_HINT = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


class AuthError(Exception):
    """A request was refused: ``close_code`` for WebSocket, ``http_status`` for HTTP.

    Either 4001/401 (missing, invalid or expired token) or 4003/403 (valid
    token that does not reach this document or this action).
    """

    def __init__(self, close_code: int, http_status: int, message: str):
        super().__init__(message)
        self.close_code = close_code
        self.http_status = http_status
        self.message = message


def _unauthenticated(message: str) -> AuthError:
    return AuthError(CLOSE_BAD_TOKEN, 401, message)


def _forbidden(message: str) -> AuthError:
    return AuthError(CLOSE_NOT_ALLOWED, 403, message)


# Document patterns


def valid_pattern(pattern: object) -> bool:
    """A document pattern: 1-128 of the document-name characters plus ``*`` and ``?``."""
    return isinstance(pattern, str) and _PATTERN_RE.fullmatch(pattern) is not None


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    """Glob to regex: ``*`` is any run of name characters, ``?`` exactly one, all else literal."""
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(_DOC_CHAR + "*")
        elif ch == "?":
            parts.append(_DOC_CHAR)
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts))


def _matches(pattern: str, doc: str) -> bool:
    if "*" not in pattern and "?" not in pattern:
        return pattern == doc
    return _compile(pattern).fullmatch(doc) is not None


# Grants


@dataclass(frozen=True)
class Grant:
    """What one verified token (or the open server) lets its holder do."""

    role: str  # "edit" | "read"
    docs: tuple[str, ...]  # patterns; ("*",) when the server is open
    name: str | None = None
    expires: float | None = None  # Unix time; None never expires
    share: bool = True  # may mint share links (see can_share)
    jti: str | None = None  # the token's id; None for tokens minted before ids (not revocable one by one)

    def allows(self, doc: str) -> bool:
        """Whether ``doc`` matches one of the patterns (case-sensitive, whole name)."""
        return isinstance(doc, str) and any(_matches(p, doc) for p in self.docs)

    @property
    def can_edit(self) -> bool:
        return self.role == "edit"

    def can_share(self, role: str) -> bool:
        """Whether the holder may mint a link of ``role``: never more than it holds.

        An edit grant may mint edit and read links, a read grant only read
        links, and a grant minted with ``share=False`` none.
        """
        if not self.share or role not in ROLES:
            return False
        return role == "read" or self.role == "edit"


#: The grant of everyone on a server with no secret configured.
OPEN_GRANT = Grant(role="edit", docs=("*",), name=None, expires=None, share=True)


def visible_docs(grant: Grant, names: Iterable[str]) -> list[str]:
    """The subset of ``names`` the grant reaches, in their order (for ``GET /api/docs``)."""
    return [n for n in names if grant.allows(n)]


def _covers(grant: Grant, pattern: str) -> bool:
    """Whether ``grant`` reaches every document ``pattern`` names."""
    if "*" not in pattern and "?" not in pattern:
        return grant.allows(pattern)
    return "*" in grant.docs or pattern in grant.docs


def may_manage(caller: Grant, target: Grant) -> bool:
    """Whether ``caller`` may revoke ``target`` or change its role.

    The rule: whoever may hand out ``target`` may take it back. The caller
    must be allowed to share ``target``'s role (an edit grant: any link; a
    read grant: read links only; ``share=False``: none) and reach every
    document ``target`` names. A token holding the server's secret mints a
    caller with ``docs=["*"]``, which reaches everything; a share link may
    revoke itself.
    """
    return caller.can_share(target.role) and all(_covers(caller, p) for p in target.docs)


# Secrets and tokens


def check_secret(secret: str) -> None:
    """Refuse a secret too short for HS256 (raises ``ValueError`` telling how to make one).

    The server should call this at startup so that a weak ``COLLAB_SECRET``
    stops it rather than every connection.
    """
    if not isinstance(secret, str) or not secret:
        raise ValueError(f"COLLAB_SECRET is not set; generate one with: {_GENERATE_HINT}")
    if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        raise ValueError(
            f"COLLAB_SECRET is {len(secret.encode('utf-8'))} bytes; HS256 needs at least "
            f"{MIN_SECRET_BYTES}. Generate one with: {_GENERATE_HINT}"
        )


def _check_ttl(ttl_seconds: float | None) -> None:
    if ttl_seconds is None:
        return
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, (int, float)):
        raise ValueError("ttl_seconds must be a number of seconds or None")
    if not math.isfinite(ttl_seconds) or ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive and finite (None for a token that never expires)")


def _normalize_docs(docs: list[str] | tuple[str, ...] | str) -> list[str]:
    if isinstance(docs, str):
        docs = [docs]
    docs = list(docs)
    if not docs:
        raise ValueError("a token must name at least one document or pattern")
    if len(docs) > MAX_PATTERNS:
        raise ValueError(f"a token names at most {MAX_PATTERNS} documents or patterns")
    for p in docs:
        if not valid_pattern(p):
            raise ValueError(
                f"invalid document pattern {p!r}: use 1-128 of A-Z a-z 0-9 . _ - "
                "with * (any run) and ? (one character)"
            )
    return list(dict.fromkeys(docs))  # drop duplicates, keep order


def mint_token(
    secret: str,
    docs: list[str] | str,
    role: str = "edit",
    ttl_seconds: float | None = DEFAULT_TTL,
    name: str | None = None,
    *,
    share: bool = True,
    now: float | None = None,
) -> str:
    """Sign a token reaching ``docs`` (names or globs like ``team-*``) with ``role``.

    This is what ``collab token`` calls, and what an application that embeds
    collab behind its own login calls after authenticating a user::

        from collab.auth import mint_token
        token = mint_token(os.environ["COLLAB_SECRET"], ["notes-42"], role="edit",
                           ttl_seconds=3600, name=user.display_name)
        # then open wss://collab.example.com/ws/notes-42?token=<token>

    ``ttl_seconds=None`` mints a token that never expires: it can then only
    be revoked with ``collab token --revoke`` (or by changing the secret, which revokes every token). ``share``
    says whether the holder may mint share links. Raises ``ValueError`` for a
    short secret or bad arguments.
    """
    check_secret(secret)
    patterns = _normalize_docs(docs)
    if role not in ROLES:
        raise ValueError(f"role must be 'edit' or 'read', not {role!r}")
    _check_ttl(ttl_seconds)
    if name is not None:
        if not isinstance(name, str):
            raise ValueError("name must be a string")
        name = name.strip()
        if len(name) > MAX_DISPLAY_NAME:
            raise ValueError(f"name is limited to {MAX_DISPLAY_NAME} characters")
    issued = time.time() if now is None else now
    exp = None if ttl_seconds is None else int(math.ceil(issued + ttl_seconds))
    return _encode(secret, patterns, role, issued, exp, name or None, bool(share))


def _encode(
    secret: str, patterns: list[str], role: str, issued: float, exp: int | None, name: str | None, share: bool
) -> str:
    payload: dict[str, object] = {"aud": AUDIENCE, "docs": patterns, "role": role, "share": share, "iat": int(issued),
                                  "jti": secrets.token_urlsafe(12)}
    if exp is not None:
        payload["exp"] = exp
    if name:
        payload["name"] = name
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str | None, *, now: float | None = None) -> Grant:
    """Check a token's signature, audience, expiry and claims; return its :class:`Grant`.

    Raises :class:`AuthError` (4001/401) for a missing, malformed, tampered,
    foreign or expired token, and ``ValueError`` when the secret itself is
    unusable (a configuration error, not the client's).
    """
    check_secret(secret)
    if token is None or token == "":
        raise _unauthenticated("missing token")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise _unauthenticated("invalid token")
    options = {"require": ["aud", "docs", "role"], "enforce_minimum_key_length": True}
    try:
        if now is None:
            claims = jwt.decode(
                token, secret, algorithms=[ALGORITHM], audience=AUDIENCE, leeway=LEEWAY_SECONDS, options=options
            )
        else:  # a fixed clock (tests, tools): check time claims ourselves
            options.update(verify_exp=False, verify_iat=False, verify_nbf=False)
            claims = jwt.decode(token, secret, algorithms=[ALGORITHM], audience=AUDIENCE, options=options)
            _check_times(claims, now)
    except jwt.ExpiredSignatureError:
        raise _unauthenticated("token expired") from None
    except jwt.InvalidTokenError:
        raise _unauthenticated("invalid token") from None
    return _grant_from_claims(claims)


def _check_times(claims: dict, now: float) -> None:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    for value in (exp, nbf):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise jwt.InvalidTokenError("bad time claim")
    if exp is not None and exp <= now - LEEWAY_SECONDS:
        raise jwt.ExpiredSignatureError("expired")
    if nbf is not None and nbf > now + LEEWAY_SECONDS:
        raise jwt.InvalidTokenError("not yet valid")


def _display_name_ok(name: object) -> bool:
    """A ``name`` claim the server can show: a short string without lone surrogates (no encoder takes those)."""
    if not isinstance(name, str) or len(name) > MAX_DISPLAY_NAME:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _grant_from_claims(claims: dict) -> Grant:
    """Validate the collab claims of a correctly signed token."""
    docs, role, jti = claims.get("docs"), claims.get("role"), claims.get("jti")
    share_claim, name, exp = claims.get("share", True), claims.get("name"), claims.get("exp")
    if (
        not isinstance(docs, list)
        or not docs
        or len(docs) > MAX_PATTERNS
        or not all(valid_pattern(p) for p in docs)
        or role not in ROLES
        or not isinstance(share_claim, bool)
        or (name is not None and not _display_name_ok(name))
        or (jti is not None and not (isinstance(jti, str) and 0 < len(jti) <= 64 and jti.isascii()))
    ):
        raise _unauthenticated("invalid token claims")
    return Grant(
        role=role,
        docs=tuple(docs),
        name=name or None,
        expires=float(exp) if exp is not None else None,
        share=share_claim,
        jti=jti,
    )


def claims_unverified(secret: str, token: str) -> Grant:
    """The grant of a correctly signed token, expired or not (to revoke one, its expiry does not matter).

    Raises :class:`AuthError` 401 ``invalid token`` for anything not signed with ``secret``.
    """
    check_secret(secret)
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise _unauthenticated("invalid token")
    options = {"require": ["aud", "docs", "role"], "verify_exp": False, "verify_iat": False, "verify_nbf": False}
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], audience=AUDIENCE, options=options)
    except jwt.InvalidTokenError:
        raise _unauthenticated("invalid token") from None
    return _grant_from_claims(claims)


def authorize(secret: str, token: str | None, doc: str | None) -> Grant:
    """The grant for a request on ``doc`` (``None``: no particular document, e.g. the list).

    Open server (empty ``secret``): :data:`OPEN_GRANT`, whatever the token.
    Otherwise the token must verify (else ``AuthError`` 4001/401) and reach
    ``doc`` (else ``AuthError`` 4003/403).
    """
    if not secret:
        return OPEN_GRANT
    grant = verify_token(secret, token)
    if doc is not None and not grant.allows(doc):
        raise _forbidden(f"token does not grant access to document {doc!r}")
    return grant


def extract_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token of a request: ``Authorization: Bearer <t>`` first, else ``?token=``.

    Browsers cannot set headers on a WebSocket handshake, so WebSockets use
    the query parameter; HTTP clients should prefer the header, which stays
    out of access logs and proxies' logs.
    """
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


# Share links


@dataclass(frozen=True)
class ShareLink:
    """A link a viewer can copy: ``url`` opens the editor with ``token`` attached."""

    role: str
    token: str | None  # None on an open server: the plain page URL is enough
    url: str | None  # None when no page URL was given
    expires: float | None
    id: str | None = None  # the token's jti (None on an open server)
    issued: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"role": self.role, "token": self.token, "url": self.url, "expires": self.expires, "id": self.id}


def _attach_token(page_url: str, token: str, fragment: bool = True) -> str:
    """Put the token in the URL *fragment* (browsers never send it to servers or in Referer),
    or, with ``fragment=False``, in the query string for pages that only read ``?token=``."""
    base = page_url.split("#", 1)[0]
    if fragment:
        return f"{base}#token={token}"
    base, _, query = base.partition("?")
    params = [p for p in query.split("&") if p and not p.startswith("token=")]
    return f"{base}?{'&'.join(params + [f'token={token}'])}"


def share(
    secret: str,
    grant: Grant,
    doc: str,
    role: str,
    page_url: str | None = None,
    ttl_seconds: float | None = DEFAULT_SHARE_TTL,
    *,
    fragment: bool = True,
    now: float | None = None,
) -> ShareLink:
    """Mint a share link for ``doc`` with ``role`` on behalf of ``grant`` (the sharer's).

    The new token names exactly ``doc``, never outlives the sharer's token,
    and carries ``share=True`` (the recipient may pass on links no stronger
    than its own; forwarding the link does as much). ``page_url`` is the
    absolute URL of the document's editor page; the token goes in its
    fragment (``#token=...``), which the page reads and sends as ``?token=``
    on the WebSocket; ``fragment=False`` puts it in the query string instead
    (``?token=``), which servers and proxies see and may log.

    Raises ``ValueError`` (HTTP 400) for a role other than edit/read or a
    read-only link on an open server (it could not be enforced), and
    :class:`AuthError` 4003/403 when the grant does not reach ``doc`` or may
    not share ``role``.
    """
    if role not in ROLES:
        raise ValueError("role must be 'edit' or 'read'")
    if not secret:
        if role == "read":
            raise ValueError(
                "read-only links need a secret: without COLLAB_SECRET everyone may edit every document"
            )
        return ShareLink(role="edit", token=None, url=page_url, expires=None)
    if not grant.allows(doc):
        raise _forbidden(f"token does not grant access to document {doc!r}")
    if not grant.can_share(role):
        raise _forbidden(f"this token may not create {role} links")
    _check_ttl(ttl_seconds)
    check_secret(secret)
    issued = time.time() if now is None else now
    limit = None if ttl_seconds is None else issued + ttl_seconds
    if grant.expires is not None:
        limit = grant.expires if limit is None else min(limit, grant.expires)
    # Rounded down: a share link never outlives the sharer's token, not even by a fraction.
    exp = None if limit is None else int(math.floor(limit))
    if exp is not None and exp <= issued:
        raise _unauthenticated("token expired")
    token = _encode(secret, [doc], role, issued, exp, None, True)
    url = _attach_token(page_url, token, fragment) if page_url else None
    jti = claims_unverified(secret, token).jti
    return ShareLink(role=role, token=token, url=url, expires=None if exp is None else float(exp), id=jti,
                     issued=float(int(issued)))


# Durations


_TTL_RE = re.compile(r"(?i)\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_ttl(text: str) -> float:
    """Seconds in ``"3600"``, ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` or ``"2w"``; ``ValueError`` otherwise."""
    m = _TTL_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"invalid duration {text!r}: use e.g. 3600, 30m, 12h, 7d or 2w")
    seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be more than zero")
    return seconds


def parse_ttl_optional(text: str) -> float | None:
    """Like :func:`parse_ttl`, but ``"never"`` or ``"none"`` gives ``None`` (a token that never expires)."""
    if isinstance(text, str) and text.strip().lower() in ("never", "none"):
        return None
    return parse_ttl(text)
