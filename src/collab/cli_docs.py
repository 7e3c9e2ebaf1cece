"""``collab ls``, ``title``, ``rename``, ``rm``, ``restore`` and ``trash``: documents from the command line.

Each calls the server's HTTP API (``docs/protocol.md``) with ``--token``
(or ``COLLAB_TOKEN``), or, when ``COLLAB_SECRET`` is set, a short-lived
token for every document minted with it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Iterator
from urllib.parse import quote, urljoin

from .cli_share import ShareError, _call, _request, _when, authority


def add_parsers(sub: Any, token_help: str, url_help: str) -> None:
    """Add ``rm``, ``restore``, ``ls``, ``title``, ``rename`` and ``trash`` to the ``collab`` parser."""
    for name, text in (("rm", "delete a document into the trash (restorable until it is purged)"),
                       ("restore", "bring a document back from the trash")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("url", metavar="URL", help=url_help)
        p.add_argument("doc", metavar="DOC", help="document name")
        p.add_argument("--token", default=os.environ.get("COLLAB_TOKEN"), help=token_help)
    p = sub.add_parser("ls", help="list the documents with their titles",
                       description="List the documents the token may open: name, title, revision, last edit.")
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("--token", default=os.environ.get("COLLAB_TOKEN"), help=token_help)
    p = sub.add_parser("title", help="set a document's title (or go back to its first heading)",
                       description="Set a document's title; without TITLE, its first heading is the title again.")
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("doc", metavar="DOC", help="document name")
    p.add_argument("title", metavar="TITLE", nargs="?", help="the new title (omit to use the first heading)")
    p.add_argument("--token", default=os.environ.get("COLLAB_TOKEN"), help=token_help)
    p = sub.add_parser("rename", help="give a document a new name (the old one redirects)",
                       description="Give a document a new name; its editors reopen it there, and the old name "
                                   "redirects. Tokens naming the old name do not reach the new one.")
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("doc", metavar="DOC", help="document name")
    p.add_argument("new", metavar="NEW", help="the new name")
    p.add_argument("--token", default=os.environ.get("COLLAB_TOKEN"), help=token_help)
    p = sub.add_parser("trash", help="list the documents in the trash", description="List the documents in the "
                       "trash, with when each was deleted and when it will be purged (GET /api/trash).")
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("--token", default=os.environ.get("COLLAB_TOKEN"), help=token_help)


def _every(url: str, token: str | None) -> Iterator[dict]:
    """The rows of every page of a list, following ``Link: rel="next"``."""
    while url:
        rows, resp = _request("GET", url, token)
        yield from rows
        nxt = resp.links.get("next")
        url = urljoin(url, nxt["url"]) if nxt else ""


def cmd_docs(args: argparse.Namespace) -> int:
    """Run ``rm``, ``restore`` or ``trash``."""
    from .client import http_url

    base = http_url(args.url)
    token = authority(args.token, None)
    try:
        if args.command == "trash":
            rows = _call("GET", f"{base}/api/trash", token)
            if not rows:
                print("collab: the trash is empty", file=sys.stderr)
            for r in rows:
                print(f"{r['id']}  deleted {_when(r['deleted'])}  purged after {_when(r['purge_at'])}  rev {r['rev']}")
            return 0
        if args.command == "ls":
            for d in _every(f"{base}/api/docs", token):
                print(f"{d['id']}  {d.get('title') or '-'}  rev {d['rev']}  edited {_when(d['updated'])}")
            return 0
        path = f"{base}/api/docs/{quote(args.doc, safe='')}"
        if args.command == "title":
            r = _call("POST", path + "/title", token, {"title": args.title})
            print(f"collab: the title of {args.doc!r} is {r['title']!r}", file=sys.stderr)
        elif args.command == "rename":
            _call("POST", path + "/rename", token, {"name": args.new})
            print(f"collab: {args.doc!r} is now {args.new!r}; the old name redirects", file=sys.stderr)
        elif args.command == "rm":
            r = _call("DELETE", path, token)
            print(f"collab: {args.doc!r} is in the trash until {_when(r['purge_at'])}; "
                  f"undo with: collab restore {args.url} {args.doc}", file=sys.stderr)
        else:
            r = _call("POST", f"{base}/api/trash/{quote(args.doc, safe='')}/restore", token)
            print(f"collab: {args.doc!r} is back, at rev {r['rev']}", file=sys.stderr)
    except ShareError as e:
        print(f"collab {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0
