"""The ``collab`` command: run a server, read and write documents, follow
changes, mint tokens.

Every ``serve`` flag overrides the matching environment variable (see
:mod:`collab.config`), so the same server can be configured either way.
``python -m collab`` is the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any, Sequence

from . import __version__
from .config import sqlite_sync

EPILOG = """\
examples:
  collab serve                                 # http://127.0.0.1:8000, data in ./data
  collab serve --host 0.0.0.0 --port 8080 --data-dir /var/lib/collab
  collab cat http://127.0.0.1:8000 notes       # print the text of document "notes"
  collab put http://127.0.0.1:8000 notes < notes.txt
  collab tail http://127.0.0.1:8000 notes      # one line per change; Ctrl-C to stop
  collab history http://127.0.0.1:8000 notes   # editing sessions, newest first
  collab cat --rev 42 http://127.0.0.1:8000 notes   # the text at revision 42
  COLLAB_SECRET=... collab token --doc 'team-*' --role read --ttl 7d
  collab rm http://127.0.0.1:8000 notes        # into the trash; collab restore brings it back

A document is any name of 1-128 characters A-Z a-z 0-9 . _ - (not starting
with '.'); it exists as soon as you use it. Run `collab COMMAND --help` for
the options of one command.
"""

SERVE_EPILOG = """\
Every flag overrides an environment variable (shown in brackets), so a
container can be configured with either. Without --secret (COLLAB_SECRET)
the server is open: anyone who can reach it may edit every document, which
is right for a single user on 127.0.0.1 and wrong on a network.

examples:
  collab serve
  collab serve --host 0.0.0.0 --port 8080 --data-dir /var/lib/collab
  COLLAB_SECRET=$(python -c "import secrets; print(secrets.token_urlsafe(32))") collab serve
  collab serve --database-url postgres://u:p@db/collab --redis-url redis://cache:6379 --workers 4
"""

TOKEN_EPILOG = """\
The token is signed with COLLAB_SECRET (the server's secret) and printed on
stdout alone, so it can be captured:  TOKEN=$(collab token --doc notes)
Use it as ws://host/ws/notes?token=TOKEN, or --token TOKEN with cat/put/tail.

examples:
  collab token --doc notes                       # edit "notes" for 7 days
  collab token --doc 'team-*' --role read --ttl 12h --name "Wall display"
  collab token --doc a --doc b --ttl never       # never expires (revoke it with --revoke)
  collab token --revoke "$TOKEN" --url http://127.0.0.1:8000   # closes its sessions at once
"""


class CliError(Exception):
    """A failure to report on stderr as one line (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as one line that points to ``--help``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------
# Parsing helpers


def parse_ttl(text: str) -> float | None:
    """``30m``, ``12h``, ``7d``, ``2w``, ``90s`` or plain seconds; ``never`` for no expiry."""
    from .auth import parse_ttl_optional

    try:
        return parse_ttl_optional(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return n


def _revision(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a revision (a whole number >= 0)")
    return int(text)


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0 picks a free one)")
    return n


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than zero")
    return x


#: serve flag -> (Settings field, type, environment variable, help)
SERVE_FLAGS: list[tuple[str, str, Any, str, str]] = [
    ("--host", "host", str, "COLLAB_HOST", "address to listen on; 0.0.0.0 for every interface (default 127.0.0.1)"),
    ("--port", "port", _port, "PORT, COLLAB_PORT", "TCP port (default 8000)"),
    ("--data-dir", "data_dir", str, "COLLAB_DATA_DIR", "directory of the SQLite database (default ./data)"),
    ("--sqlite-sync", "sqlite_sync", sqlite_sync, "COLLAB_SQLITE_SYNC",
     "full (default): an edit is acknowledged once fsynced, and survives a power cut; normal: once the OS "
     "has it, which survives kill -9 but not a crash of the machine, for 1.1-1.5 times the edits/s under heavy load"),
    ("--fsync-timeout", "fsync_timeout", _positive_float, "COLLAB_FSYNC_TIMEOUT",
     "seconds an fsync of the SQLite store may stay unanswered before /healthz answers 503 (default 10)"),
    ("--database-url", "database_url", str, "DATABASE_URL", "postgres://... to store documents in PostgreSQL instead of SQLite"),
    ("--redis-url", "redis_url", str, "REDIS_URL", "redis://... to share documents between processes and machines"),
    ("--workers", "workers", _positive_int, "WEB_CONCURRENCY", "processes sharing the port (more than 1 needs --redis-url)"),
    ("--secret", "secret", str, "COLLAB_SECRET", "token signing secret (32+ bytes); enables auth. Prefer the "
     "environment variable: a flag is visible to other local users in `ps`"),
    ("--allowed-origins", "allowed_origins", _csv, "COLLAB_ALLOWED_ORIGINS",
     "comma-separated browser origins allowed to connect, e.g. https://notes.example.com"),
    ("--history-depth", "history_depth", _positive_int, "COLLAB_HISTORY_DEPTH",
     "operations kept per document for reconnecting clients (default 1000)"),
    ("--max-message-bytes", "max_message_bytes", _positive_int, "COLLAB_MAX_MESSAGE_BYTES",
     "largest WebSocket message accepted (default 4 MiB)"),
    ("--incoming-bytes", "incoming_bytes", _positive_int, "COLLAB_INCOMING_BYTES",
     "bytes all unfinished incoming WebSocket messages together may hold; beyond, 1013 (default 64 MiB)"),
    ("--message-timeout", "message_timeout", _positive_float, "COLLAB_MESSAGE_TIMEOUT",
     "seconds a client may take to send one WebSocket message (default 60)"),
    ("--conn-rate", "conn_rate", _positive_float, "COLLAB_CONN_RATE", "new connections per second per IP (default 20)"),
    ("--conn-burst", "conn_burst", _positive_int, "COLLAB_CONN_BURST", "burst of new connections per IP (default 40)"),
    ("--conn-per-ip", "conn_per_ip", _positive_int, "COLLAB_CONN_PER_IP", "open connections per IP (default 64)"),
    ("--max-connections", "max_connections", _positive_int, "COLLAB_MAX_CONNECTIONS",
     "open connections in total; beyond it new ones get 1013 (default 5000)"),
    ("--handshake-timeout", "handshake_timeout", _positive_float, "COLLAB_HANDSHAKE_TIMEOUT",
     "seconds a connection may take to finish its handshake (default 5)"),
    ("--msg-rate", "msg_rate", _positive_float, "COLLAB_MSG_RATE", "messages per second per connection (default 100)"),
    ("--msg-burst", "msg_burst", _positive_int, "COLLAB_MSG_BURST", "burst of messages per connection (default 200)"),
    ("--bytes-rate", "bytes_rate", _positive_float, "COLLAB_BYTES_RATE", "bytes per second per connection (default 2 MiB)"),
    ("--bytes-burst", "bytes_burst", _positive_int, "COLLAB_BYTES_BURST", "burst of bytes per connection (default 8 MiB)"),
    ("--addr-msg-rate", "addr_msg_rate", _positive_float, "COLLAB_ADDR_MSG_RATE",
     "messages per second per address, all its connections together (default 200)"),
    ("--backoff-max", "backoff_max", _positive_float, "COLLAB_BACKOFF_MAX",
     "longest wait, in seconds, before an address closed for flooding may reconnect (default 60)"),
    ("--trusted-proxies", "trusted_proxies", _csv, "COLLAB_TRUSTED_PROXIES",
     "comma-separated proxy addresses/CIDRs whose X-Forwarded-For is believed"),
    ("--log-level", "log_level", str, "COLLAB_LOG_LEVEL", "debug, info, warning or error (default info)"),
]


def _add_text_commands(sub: Any, token_help: str, url_help: str) -> None:
    """``cat``, ``history``, ``put`` and ``tail``: a document's text from the command line."""
    p = sub.add_parser("cat", help="print a document's text",
                       description="Print the current text of a document (GET /api/docs/DOC/text).",
                       epilog="example:\n  collab cat http://127.0.0.1:8000 notes > notes.txt",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("doc", metavar="DOC", help="document name")
    p.add_argument("--token", default=os.environ.get("COLLAB_TOKEN"), help=token_help)
    p.add_argument("--rev", type=_revision, default=None, metavar="N",
                   help="print the text at revision N instead (see `collab history`)")

    p = sub.add_parser("history", help="list a document's editing sessions, newest first",
                       description="List DOC's editing sessions, newest first: revisions, when, who, "
                                   "and how many characters were inserted and deleted. "
                                   "`collab cat --rev N` prints the text at any revision.")
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("doc", metavar="DOC", help="document name")
    p.add_argument("--token", default=os.environ.get("COLLAB_TOKEN"), help=token_help)
    p.add_argument("--before", type=_revision, default=None, metavar="REV",
                   help="only sessions that ended before revision REV (to page back)")
    p.add_argument("--limit", type=_positive_int, default=50, metavar="N", help="at most N sessions (default 50)")

    p = sub.add_parser("put", help="replace a document's text with stdin",
                       description="Replace the text of a document with what is read from stdin (or --file), "
                                   "as one operation that connected editors see live (PUT /api/docs/DOC/text).",
                       epilog="examples:\n  collab put http://127.0.0.1:8000 notes < notes.txt\n"
                              "  echo hello | collab put http://127.0.0.1:8000 notes",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("doc", metavar="DOC", help="document name")
    p.add_argument("-f", "--file", help="read the text from this file instead of stdin")
    p.add_argument("--token", default=os.environ.get("COLLAB_TOKEN"), help=token_help)

    p = sub.add_parser("tail", help="print changes to a document as they happen",
                       description="Follow a document over WebSocket and print one line per change, e.g.\n"
                                   '  rev 12 client 3f9a1c (ada): insert "x" at 4\n'
                                   "Reconnects by itself; Ctrl-C stops.",
                       epilog="example:\n  collab tail http://127.0.0.1:8000 notes",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("doc", metavar="DOC", help="document name")
    p.add_argument("--token", default=os.environ.get("COLLAB_TOKEN"), help=token_help)
    p.add_argument("--name", default="collab tail", help="name shown to the other editors (default: collab tail)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="collab",
        description="collab: a self-hostable real-time collaborative text editor.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"collab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "serve", help="run the server", description="Run the collab server (HTTP API, WebSocket and browser editor).",
        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    metavars = {"data_dir": "DIR", "database_url": "URL", "redis_url": "URL", "allowed_origins": "ORIGINS",
                "trusted_proxies": "CIDRS", "log_level": "LEVEL", "sqlite_sync": "full|normal"}
    for flag, dest, typ, env, text in SERVE_FLAGS:
        metavar = metavars.get(dest) or (dest.upper() if typ in (str, _port) else "N")
        p.add_argument(flag, dest=dest, type=typ, default=None, metavar=metavar, help=f"{text} [{env}]")

    token_help = "access token, needed when the server has a secret [COLLAB_TOKEN]"
    url_help = "server address, e.g. http://127.0.0.1:8000 (ws:// works too)"

    _add_text_commands(sub, token_help, url_help)

    p = sub.add_parser("token", help="mint an access token (needs COLLAB_SECRET)",
                       description="Mint a signed access token for one or more documents.",
                       epilog=TOKEN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doc", action="append", metavar="PATTERN",
                   help="document name or glob (* any run, ? one character); repeat for several")
    p.add_argument("--role", choices=["edit", "read"], default="edit", help="edit (default) or read-only")
    p.add_argument("--ttl", type=parse_ttl, default="7d",
                   help="lifetime: plain seconds, 30m, 12h, 7d, 2w, or never (default 7d)")
    p.add_argument("--name", help="display name shown to other editors")
    p.add_argument("--no-share", action="store_true", help="the holder may not mint share links")
    p.add_argument("--revoke", metavar="TOKEN", help="revoke TOKEN (or a link carrying it) at the server --url")
    p.add_argument("--url", metavar="URL", help="with --revoke: the server, e.g. http://127.0.0.1:8000")

    from . import cli_docs, cli_share

    cli_share.add_parser(sub, token_help, url_help)
    cli_docs.add_parsers(sub, token_help, url_help)
    return parser


# ---------------------------------------------------------------------------
# Commands


def serve_settings(args: argparse.Namespace, env: dict[str, str] | None = None):
    """Settings from the environment, overridden by the flags that were given."""
    from .config import Settings

    changes = {dest: getattr(args, dest, None) for _, dest, *_ in SERVE_FLAGS}
    return Settings.from_env(env).replace(**changes)


def banner(settings, port: int) -> str:
    """The line ``collab serve`` prints once it serves: where, which store, whether auth is on."""
    from .startup import where

    shown = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if ":" in shown:
        shown = f"[{shown}]"
    if settings.database_url:
        store = where(settings.database_url, 5432)
    else:
        store = os.path.abspath(settings.data_dir)
        if settings.sqlite_sync != "full":
            store += f", sqlite sync: {settings.sqlite_sync}"
    return (f"collab {__version__} serving http://{shown}:{port}/  (WebSocket ws://{shown}:{port}/ws/DOC, "
            f"data: {store}, auth: {'on' if settings.secret else 'off'}); Ctrl-C stops")


def cmd_serve(args: argparse.Namespace) -> int:
    from .startup import Sources

    settings = serve_settings(args)
    if settings.secret:
        from .auth import check_secret

        try:
            check_secret(settings.secret)
        except ValueError as e:
            raise CliError(str(e)) from None
    from .server import run

    if settings.sqlite_sync != "full" and settings.database_url:
        print("note: COLLAB_SQLITE_SYNC / --sqlite-sync applies to SQLite only; with PostgreSQL, its own "
              "synchronous_commit decides when a commit is durable", file=sys.stderr)

    def ready(port: int) -> None:
        warning = settings.storage_warning  # loud, and last before the banner, where it is seen
        if warning:
            print(f"collab: WARNING: {warning}", file=sys.stderr, flush=True)
        print(banner(settings, port), flush=True)

    run(settings, on_ready=ready, sources=Sources.of(vars(args), os.environ))
    return 0


def _http_base(url: str) -> str:
    from .client import http_url

    return http_url(url)


def _doc_path(doc: str) -> str:
    from urllib.parse import quote

    return f"/api/docs/{quote(doc, safe='')}/text"


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _http_error(resp: Any, doc: str) -> CliError:
    try:
        body = resp.json()
        detail = body.get("message") or body.get("detail") or body.get("error") or ""
    except ValueError:
        detail = resp.text.strip()[:200]
    hint = {
        401: "the server needs a token: pass --token or set COLLAB_TOKEN (mint one with `collab token`)",
        403: f"the token does not allow this on {doc!r}: mint one whose --doc matches (and --role edit to write)",
        404: "no such document or invalid name (1-128 of A-Z a-z 0-9 . _ -), or URL is not a collab server",
        410: "that revision's history was thinned by the server's COLLAB_HISTORY_RETAIN; "
             "`collab history` lists the revisions still kept (each session's last)",
        413: "the text is larger than the server accepts",
    }.get(resp.status_code, "")
    parts = [f"HTTP {resp.status_code}", detail, hint]
    return CliError(": ".join(p for p in parts if p))


def _request(method: str, url: str, doc: str, token: str | None, content: bytes | None = None,
             path: str | None = None, params: dict | None = None):
    import httpx

    base = _http_base(url)
    headers = _headers(token)
    if content is not None:
        headers["Content-Type"] = "text/plain; charset=utf-8"
    target = base + (path if path is not None else _doc_path(doc))
    try:
        resp = httpx.request(method, target, headers=headers, content=content, params=params, timeout=30)
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach {base}: {e}. Is the server running? (start one with `collab serve`)") from None
    if resp.status_code >= 400:
        raise _http_error(resp, doc)
    return resp


def cmd_cat(args: argparse.Namespace) -> int:
    rev = getattr(args, "rev", None)
    resp = _request("GET", args.url, args.doc, args.token, params=None if rev is None else {"rev": rev})
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
    if out is not None:
        sys.stdout.flush()
        out.write(resp.content)
        out.flush()
    else:  # a replaced stdout (tests, notebooks)
        sys.stdout.write(resp.content.decode("utf-8"))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    resp = _request("GET", args.url, args.doc, args.token, path=f"/api/docs/{quote(args.doc, safe='')}/revisions",
                    params={"limit": args.limit, **({"before": args.before} if args.before is not None else {})})
    for s in resp.json():
        print(session_line(s))
    return 0


def session_line(s: dict) -> str:
    """One editing session as a line: revisions, local start time and length, authors, characters."""
    import time

    revs = f"{s['from']}-{s['to']}" if s["from"] != s["to"] else str(s["from"])
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["start"]))
    minutes = (s["end"] - s["start"]) / 60
    took = f"{minutes:.0f} min" if minutes >= 1 else "<1 min"
    who = ", ".join(s["authors"]) or "(unknown)"
    return f"{revs:>15}  {when} ({took})  {who}  +{s['inserted']} -{s['deleted']}"


def cmd_put(args: argparse.Namespace) -> int:
    if args.file:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CliError(f"cannot read {args.file}: {e.strerror}") from None
    else:
        if sys.stdin.isatty():
            print("collab: reading the new text from the terminal; end with Ctrl-D "
                  "(or: collab put URL DOC < file)", file=sys.stderr)
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CliError(f"the input is not UTF-8 text (byte {e.start}); convert it first, e.g. with iconv") from None
    resp = _request("PUT", args.url, args.doc, args.token, content=text.encode("utf-8"))
    try:
        rev = resp.json().get("rev")
    except ValueError:
        rev = None
    n = len(text)
    print(f"{args.doc}: {n} character{'s' if n != 1 else ''} written" + (f", now at rev {rev}" if rev is not None else ""),
          file=sys.stderr)
    return 0


def _quote(s: str, limit: int = 80) -> str:
    if len(s) > limit:
        return json.dumps(s[:limit], ensure_ascii=False)[:-1] + '…" (' + f"{len(s)} chars)"
    return json.dumps(s, ensure_ascii=False)


def describe(op: list, before: str) -> str:
    """``insert "x" at 4, delete 2 at 9 ("ab")``: an operation as splices, positions as applied in order."""
    parts: list[str] = []
    pos = 0  # in the text being produced
    src = 0  # in ``before``
    for c in op:
        if isinstance(c, str):
            parts.append(f"insert {_quote(c)} at {pos}")
            pos += len(c)
        elif c > 0:
            pos += c
            src += c
        else:
            gone = before[src:src - c]
            parts.append(f"delete {-c} at {pos} ({_quote(gone, 40)})")
            src -= c
    return ", ".join(parts) or "no change"


async def _tail(args: argparse.Namespace) -> int:
    from .client import CollabError, Document

    d = Document(args.url, args.doc, user={"name": args.name}, token=args.token)
    try:
        await d.open()
    except CollabError as e:
        raise CliError(e.message) from None
    print(f"collab: following {args.doc!r} at rev {d.rev} ({len(d.text)} characters, "
          f"{len(d.peers)} other client{'s' if len(d.peers) != 1 else ''}); Ctrl-C to stop", file=sys.stderr)
    try:
        async for ch in d.changes():
            if ch.origin is None:
                who = "resync"
            else:
                peer = d.peers.get(ch.origin)
                name = peer.name if peer else None
                who = f"client {ch.origin}" + (f" ({name})" if name else "")
            print(f"rev {ch.rev} {who}: {describe(ch.op, ch.before)}", flush=True)
    except CollabError as e:
        raise CliError(e.message) from None
    finally:
        await d.close()
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_tail(args))
    except KeyboardInterrupt:
        return 0


def cmd_token(args: argparse.Namespace) -> int:
    from .auth import mint_token

    if args.revoke:
        from .cli_share import revoke_token

        return revoke_token(args)

    secret = os.environ.get("COLLAB_SECRET", "")
    if not secret:
        raise CliError("COLLAB_SECRET is not set: export the server's secret first, e.g. "
                       "export COLLAB_SECRET=... (the same value the server runs with)")
    try:
        token = mint_token(secret, args.doc, role=args.role, ttl_seconds=args.ttl, name=args.name,
                           share=not args.no_share)
    except ValueError as e:
        raise CliError(str(e)) from None
    print(token)
    if args.ttl is None:
        life = "never expires"
    else:
        life = f"valid for {_human_seconds(args.ttl)}"
    from .auth import claims_unverified

    print(f"collab: {args.role} token {claims_unverified(secret, token).jti} for {', '.join(args.doc)}; {life}; "
          f"revoke it with: collab token --revoke TOKEN --url URL", file=sys.stderr)
    return 0


def _human_seconds(s: float) -> str:
    for unit, n in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n and s % n == 0:
            k = int(s // n)
            return f"{k} {unit}{'s' if k != 1 else ''}"
    return f"{s:g} seconds"


def cmd_share(args: argparse.Namespace) -> int:
    from .cli_share import cmd_share as run

    return run(args)


def cmd_docs(args: argparse.Namespace) -> int:
    from .cli_docs import cmd_docs as run

    return run(args)


COMMANDS = {"serve": cmd_serve, "cat": cmd_cat, "history": cmd_history, "put": cmd_put, "tail": cmd_tail,
            "token": cmd_token, "share": cmd_share, "rm": cmd_docs, "restore": cmd_docs, "trash": cmd_docs, "ls": cmd_docs, "title": cmd_docs, "rename": cmd_docs}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``collab`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.command == "token" and not args.doc and not args.revoke:
        parser.error("collab token needs --doc PATTERN (or --revoke TOKEN --url URL)")
    try:
        return COMMANDS[args.command](args)
    except CliError as e:
        print(f"collab {args.command}: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # e.g. an invalid document name
        print(f"collab {args.command}: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:  # a setting or start-up problem, already one line saying what to do
        if not isinstance(e.code, str):
            raise
        print(f"collab {args.command}: error: {e.code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130 if args.command != "tail" else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
