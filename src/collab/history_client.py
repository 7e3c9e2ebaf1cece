"""A document's history over the HTTP API, for the Python client and the CLI.

:func:`revisions` lists editing sessions (``GET /api/docs/{doc}/revisions``),
:func:`text_at` fetches the text at a revision (``GET /api/docs/{doc}/text?rev=N``);
:class:`collab.client.Document` offers both as ``history()`` and ``text_at()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

#: HTTP status -> the ``CollabError`` code used when the answer carries none.
_CODES = {400: "bad_rev", 401: "unauthorized", 403: "forbidden", 404: "not_found", 410: "rev_gone"}


@dataclass(frozen=True, slots=True)
class Revision:
    """One editing session: revisions ``first``..``last`` committed from ``start`` to ``end`` (Unix time)."""

    first: int
    last: int
    start: float
    end: float
    authors: tuple[str, ...]
    inserted: int
    deleted: int

    @classmethod
    def from_json(cls, d: dict) -> "Revision":
        return cls(d["from"], d["to"], d["start"], d["end"], tuple(d["authors"]), d["inserted"], d["deleted"])


class HistoryError(Exception):
    """The server refused a history request: ``code`` (``not_found``, ``rev_gone``, ...), ``status`` and why."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


async def _get(base: str, doc: str, path: str, token: str | None, params: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{base}/api/docs/{quote(doc, safe='')}{path}"
    async with httpx.AsyncClient(timeout=30) as http:
        try:
            resp = await http.get(url, params={k: v for k, v in params.items() if v is not None}, headers=headers)
        except httpx.HTTPError as exc:
            raise HistoryError("unreachable", f"cannot reach {base}: {exc}", 0) from None
    if resp.status_code >= 400:
        try:
            body = resp.json()
            code, message = body.get("error", ""), body.get("message", "")
        except ValueError:
            code, message = "", resp.text.strip()[:200]
        raise HistoryError(code or _CODES.get(resp.status_code, "http_error"), message, resp.status_code)
    return resp


async def revisions(base: str, doc: str, token: str | None = None, before: int | None = None,
                    limit: int = 50) -> list[Revision]:
    """Editing sessions of ``doc`` on the server at ``base`` (``http(s)://host``), newest first."""
    resp = await _get(base, doc, "/revisions", token, {"before": before, "limit": limit})
    return [Revision.from_json(d) for d in resp.json()]


async def text_at(base: str, doc: str, rev: int, token: str | None = None) -> str:
    """The text of ``doc`` at revision ``rev``."""
    return (await _get(base, doc, "/text", token, {"rev": rev})).content.decode("utf-8")
