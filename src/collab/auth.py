"""Access control in one import: tokens, Origin checks, security headers, log redaction.

The jobs live in their own modules, re-exported here so callers keep
writing ``from collab.auth import mint_token``:

* :mod:`collab.tokens`: signed tokens, the :class:`Grant` they carry,
  :func:`authorize`, share links, token lifetimes;
* :mod:`collab.browser_policy`: :func:`origin_allowed` for WebSocket
  handshakes and :data:`SECURITY_HEADERS` for every response;
* :mod:`collab.log_redaction`: :class:`RedactTokens` keeps tokens out of logs.

``docs/security.md`` explains the choices to operators.
"""

from __future__ import annotations

from .browser_policy import SECURITY_HEADERS, origin_allowed
from .log_redaction import REDACTED, RedactTokens, install_log_redaction, redact
from .tokens import (
    ALGORITHM,
    AUDIENCE,
    CLOSE_BAD_TOKEN,
    CLOSE_NOT_ALLOWED,
    DEFAULT_SHARE_TTL,
    DEFAULT_TTL,
    LEEWAY_SECONDS,
    MAX_DISPLAY_NAME,
    MAX_PATTERNS,
    MAX_TOKEN_CHARS,
    MIN_SECRET_BYTES,
    OPEN_GRANT,
    ROLES,
    AuthError,
    Grant,
    ShareLink,
    authorize,
    check_secret,
    claims_unverified,
    extract_token,
    may_manage,
    mint_token,
    parse_ttl,
    parse_ttl_optional,
    share,
    valid_pattern,
    verify_token,
    visible_docs,
)

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
    "REDACTED",
    "ROLES",
    "RedactTokens",
    "SECURITY_HEADERS",
    "ShareLink",
    "authorize",
    "check_secret",
    "claims_unverified",
    "extract_token",
    "may_manage",
    "install_log_redaction",
    "mint_token",
    "origin_allowed",
    "parse_ttl",
    "parse_ttl_optional",
    "redact",
    "share",
    "valid_pattern",
    "verify_token",
    "visible_docs",
]
