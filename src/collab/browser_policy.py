"""What browsers may do: the Origin check of WebSocket handshakes and the security headers of every response.

Sans-I/O: the server calls :func:`origin_allowed` on every WebSocket
handshake (a refused Origin is closed with 1008, or HTTP 403) and adds
:data:`SECURITY_HEADERS` to its responses. ``docs/security.md`` explains the
rules to operators.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["SECURITY_HEADERS", "origin_allowed"]


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` to ``(scheme, host, port)`` lower-cased, or None if malformed."""
    try:
        parts = urlsplit(origin.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/") or parts.query or parts.username:
        return None
    return scheme, host.lower().rstrip("."), port if port is not None else _DEFAULT_PORTS[scheme]


def _parse_host(host: str, default_port: int) -> tuple[str, int] | None:
    """A ``Host`` header (``name[:port]``, ``[v6]:port``) to ``(host, port)``, or None."""
    try:
        parts = urlsplit("//" + host.strip())
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.path or parts.query or parts.username:
        return None
    return name.lower().rstrip("."), port if port is not None else default_port


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def origin_allowed(origin: str | None, host: str | None, allowed_origins: list[str], auth_enabled: bool) -> bool:
    """Whether a WebSocket handshake with this ``Origin`` may proceed (else close 1008 / HTTP 403).

    ``host`` is the ``Host`` header the browser sent (behind a proxy: the
    public host, so the proxy must pass it on). The rules, in order:

    1. No ``Origin``: allowed. Browsers always send one on WebSocket
       handshakes, so its absence means a non-browser client, which could
       claim any Origin anyway; tokens are what stop those.
    2. ``Origin`` in ``allowed_origins`` (``COLLAB_ALLOWED_ORIGINS``, exact
       ``scheme://host[:port]``; ``*`` allows every origin): allowed.
    3. Same origin (the Origin's host and port equal the Host header's):
       allowed when auth is on. When auth is off, only if that host is a
       loopback name or an IP literal: a DNS-rebinding page (``evil.test``
       re-pointed at 127.0.0.1) is "same-origin" with its own name, and
       without a token nothing else would stop it. An open server reached by
       a DNS name must list its origin in ``COLLAB_ALLOWED_ORIGINS``.
    4. Auth off and no list: a loopback Origin (``http://localhost:3000``,
       ``http://127.0.0.1:5173``) is allowed, for apps embedding collab on
       the same machine. Any other website is refused: otherwise any page
       the user visits could read and rewrite their local documents.
    5. Everything else, including ``Origin: null`` (sandboxed frames,
       ``file:``) unless ``null`` is listed, is refused.
    """
    if origin is None or origin == "":
        return True
    allowed = [a.strip() for a in allowed_origins if a and a.strip()]
    if "*" in allowed:
        return True
    if origin.strip().lower() == "null":
        return "null" in (a.lower() for a in allowed)
    parsed = _parse_origin(origin)
    if parsed is None:
        return False
    if any(_parse_origin(a) == parsed for a in allowed if a.lower() != "null"):
        return True
    scheme, o_host, o_port = parsed
    if host:
        h = _parse_host(host, _DEFAULT_PORTS[scheme])
        if h is not None and h == (o_host, o_port):
            if auth_enabled or _is_loopback(o_host) or _is_ip_literal(o_host):
                return True
    if not auth_enabled and not allowed and _is_loopback(o_host):
        return True
    return False


#: Headers for every HTTP response (pages, assets and API). The pages must
#: therefore load their scripts from files: no inline ``<script>``.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
