"""The browser editor's files (``/static/…`` and the two pages): gzip-compressed and cacheable.

Each file of the built frontend (a flat folder, ``frontend/dist``) is read
once, hashed and gzipped, then served from memory; it is read again only
when its size or modification time changes. A client that accepts gzip gets
the compressed bytes with ``Content-Encoding: gzip``; any other client gets
the file as it is (``Vary: Accept-Encoding`` either way, so caches keep
both apart).

Caching: every answer carries an ``ETag`` (the content's SHA-256 prefix, the
same 12 hex digits ``frontend/build.mjs`` stamps into ``?v=``), and a
request whose ``If-None-Match`` names it gets 304 without a body. A URL
whose name or ``?v=`` carries the content's hash never changes meaning, so
it may be kept for a year without asking again (``immutable``); everything
else, pages included, is revalidated on each use (``no-cache``), so a new
release is picked up at once.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

#: A file name served from the folder: no separator, no leading dot, nothing to climb out with.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
#: A chunk esbuild names by its content (``chunk-OOJM4CTU.js``, ``preview-K2XL6LTH.js``).
HASHED_NAME = re.compile(r"[a-z][a-z0-9_]*-[A-Z0-9]{8}\.js")

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
_COMPRESSIBLE = ("text/", "image/svg+xml", "application/json")


@dataclass(frozen=True, slots=True)
class Asset:
    """One file as served: its bytes, their gzip form (``None`` when it would not be smaller), its hash."""

    body: bytes
    gzipped: bytes | None
    digest: str
    media_type: str
    stamp: tuple[int, int]

    def etag(self, encoded: bool) -> str:
        """The entity tag of one representation (the gzip one differs from the file's)."""
        return f'"{self.digest}-gz"' if encoded else f'"{self.digest}"'


def media_type(name: str) -> str:
    """The ``Content-Type`` for a file name."""
    suffix = Path(name).suffix.lower()
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def load_asset(path: Path, stamp: tuple[int, int]) -> Asset:
    """Read, hash and (for text) gzip one file; deterministic bytes (no timestamp in the gzip header)."""
    body = path.read_bytes()
    kind = media_type(path.name)
    gz = gzip.compress(body, compresslevel=9, mtime=0) if kind.startswith(_COMPRESSIBLE) else None
    if gz is not None and len(gz) >= len(body):
        gz = None
    return Asset(body, gz, hashlib.sha256(body).hexdigest()[:12], kind, stamp)


def accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (``gzip`` or ``*`` with a q-value above 0)."""
    if not header:
        return False
    wildcard = None
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        coding = coding.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if coding in ("gzip", "x-gzip"):
            return q > 0
        if coding == "*":
            wildcard = q > 0
    return bool(wildcard)


def etag_matches(header: str | None, tags: tuple[str, ...]) -> bool:
    """``If-None-Match`` against this file's tags (weak comparison, as RFC 9110 asks for this header)."""
    if not header:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate in tags:
            return True
    return False


class Assets:
    """The files of one frontend folder, held in memory, answered as HTTP responses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, Asset] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Asset | None:
        """The file ``name`` of the folder, or ``None`` when it is not one (missing, a folder, an unsafe name)."""
        if not SAFE_NAME.fullmatch(name):
            return None
        path = self.root / name
        try:
            st = path.stat()
        except OSError:
            return None
        if not path.is_file():
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        asset = self._cache.get(name)
        if asset is None or asset.stamp != stamp:
            try:
                asset = load_asset(path, stamp)
            except OSError:  # unreadable, or removed since the stat: as if missing
                return None
            with self._lock:
                self._cache[name] = asset
        return asset

    def warm(self) -> None:
        """Load every file now (at start-up), so no request waits for a large file's compression."""
        for path in sorted(self.root.iterdir()):
            self.get(path.name)

    def response(self, request: Request, name: str, cache_control: str | None = None) -> Response:
        """``name`` for this request: gzip if accepted, 304 if the client holds it, 404 if there is none.

        ``cache_control`` overrides the policy chosen from the URL (pages are always revalidated).
        """
        asset = self.get(name)
        if asset is None:
            return PlainTextResponse(f"no such file: {name}", status_code=404)
        if cache_control is None:
            hashed = HASHED_NAME.fullmatch(name) or request.query_params.get("v") == asset.digest
            cache_control = IMMUTABLE if hashed else REVALIDATE
        encoded = asset.gzipped is not None and accepts_gzip(request.headers.get("accept-encoding"))
        headers = {"ETag": asset.etag(encoded), "Cache-Control": cache_control}
        if asset.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
        if etag_matches(request.headers.get("if-none-match"), (asset.etag(True), asset.etag(False))):
            return Response(status_code=304, headers=headers)
        if encoded:
            headers["Content-Encoding"] = "gzip"
        body = asset.gzipped if encoded else asset.body
        assert body is not None
        return Response(body, headers=headers, media_type=asset.media_type)
