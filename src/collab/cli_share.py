"""``collab share …`` and ``collab token --revoke``: list a document's links and take access back.

Each talks to a running server's HTTP API (``docs/protocol.md``). The
caller's own authority is, in order: ``--token`` (or ``COLLAB_TOKEN``); a
short-lived token for every document minted with ``COLLAB_SECRET``, when
set (the server's secret can revoke anything); else the credential being
revoked itself (a link may revoke itself).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import Any
from urllib.parse import quote, urlsplit

SHARE_EPILOG = """\
examples:
  collab share list http://127.0.0.1:8000 notes
  collab share revoke 'http://127.0.0.1:8000/d/notes#token=eyJ...'   # the link as the editor copies it
  collab share readonly 'http://127.0.0.1:8000/d/notes#token=eyJ...' # open sessions become read-only

Who may revoke: the link itself, anyone whose token may share links of that
role to the document, or whoever holds COLLAB_SECRET (set it in the
environment and the command mints its own authority).
"""


class ShareError(Exception):
    """A failure to report on stderr as one line."""


def add_parser(sub: Any, token_help: str, url_help: str) -> None:
    """Add ``share`` and its subcommands to the ``collab`` parser."""
    p = sub.add_parser("share", help="list a document's share links, revoke one",
                       description="List the share links of a document, revoke one, or make one read-only.",
                       epilog=SHARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="share_command", metavar="ACTION", required=True)
    q = actions.add_parser("list", help="the links minted for a document (GET /api/docs/DOC/links)")
    q.add_argument("url", metavar="URL", help=url_help)
    q.add_argument("doc", metavar="DOC", help="document name")
    q.add_argument("--token", default=os.environ.get("COLLAB_TOKEN"), help=token_help)
    for name, text in (("revoke", "revoke a link: its sessions close, and it opens nothing any more"),
                       ("readonly", "lower a link to read-only: its open sessions rejoin read-only")):
        q = actions.add_parser(name, help=text)
        q.add_argument("link", metavar="LINK", help="the whole link, server and token included, as the editor copies it")
        q.add_argument("--token", default=os.environ.get("COLLAB_TOKEN"),
                       help="your own token, if not COLLAB_SECRET or the link itself [COLLAB_TOKEN]")


def authority(explicit: str | None, fallback: str | None) -> str | None:
    """The token to act with: ``explicit``, else one minted from ``COLLAB_SECRET``, else ``fallback``."""
    if explicit:
        return explicit
    secret = os.environ.get("COLLAB_SECRET", "")
    if secret:
        from .tokens import mint_token

        return mint_token(secret, ["*"], role="edit", ttl_seconds=300, name="collab CLI")
    return fallback


def _server_of(link: str) -> str:
    parts = urlsplit(link.strip())
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ShareError(f"{link[:80]!r} is not a link: pass it whole, e.g. http://host:8000/d/notes#token=...")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def _call(method: str, url: str, token: str | None, body: dict | None = None) -> Any:
    return _request(method, url, token, body)[0]


def _request(method: str, url: str, token: str | None, body: dict | None = None) -> tuple[Any, Any]:
    """The parsed JSON body and the response (its ``links`` name a next page); ``ShareError`` on a refusal."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.request(method, url, headers=headers, json=body, timeout=30)
    except httpx.HTTPError as e:
        raise ShareError(f"cannot reach {url}: {e}. Is the server running?") from None
    try:
        data = resp.json()
    except ValueError:
        data = None
    if resp.status_code >= 400:
        detail = (data.get("message") or data.get("detail")) if isinstance(data, dict) else resp.text.strip()[:200]
        hint = {401: "your token is missing, expired or revoked: pass --token or set COLLAB_SECRET",
                403: "your token may not manage this: it must be allowed to share that role to the document"}
        raise ShareError(": ".join(p for p in (f"HTTP {resp.status_code}", detail, hint.get(resp.status_code, "")) if p))
    return data, resp


def _when(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def change(base: str, credential: str, token: str | None, lower: bool) -> dict:
    """Revoke ``credential`` (a token or a link) at ``base``, or lower it to read."""
    path, body = ("/api/tokens/role", {"token": credential, "role": "read"}) if lower else (
        "/api/tokens/revoke", {"token": credential})
    return _call("POST", base + path, token, body)


def cmd_share(args: argparse.Namespace) -> int:
    from .api_tokens import token_from_link
    from .client import http_url

    try:
        if args.share_command == "list":
            base = http_url(args.url)
            rows = _call("GET", f"{base}/api/docs/{quote(args.doc, safe='')}/links", authority(args.token, None))
            if not rows:
                print(f"collab: no share links recorded for {args.doc!r}", file=sys.stderr)
            for r in rows:
                expired = r.get("expires") is not None and r["expires"] < time.time()
                state = f"revoked {_when(r['revoked'])}" if r.get("revoked") else "expired" if expired else "active"
                by = f" by {r['by']}" if r.get("by") else ""
                print(f"{r['id']}  {r['role']:<4}  created {_when(r['issued'])}{by}  expires {_when(r['expires'])}  {state}")
            return 0
        base = _server_of(args.link)
        token = token_from_link(args.link)
        lower = args.share_command == "readonly"
        cred = change(base, token, authority(args.token, token), lower)
    except ShareError as e:
        print(f"collab share {args.share_command}: error: {e}", file=sys.stderr)
        return 1
    what = "is read-only from now on" if lower else "is revoked"
    print(f"collab: link {cred['id']} ({cred['role']}, {cred.get('doc') or 'its documents'}) {what}; "
          "its open sessions were told", file=sys.stderr)
    return 0


def revoke_token(args: argparse.Namespace) -> int:
    """``collab token --revoke TOKEN --url URL``."""
    from .client import http_url

    if not args.url:
        print("collab token: error: --revoke needs --url, the server that honours the token", file=sys.stderr)
        return 1
    try:
        cred = change(http_url(args.url), args.revoke, authority(None, args.revoke), lower=False)
    except ShareError as e:
        print(f"collab token: error: {e}", file=sys.stderr)
        return 1
    print(f"collab: token {cred['id']} is revoked; its open sessions were closed", file=sys.stderr)
    return 0
