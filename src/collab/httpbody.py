"""Reading an HTTP request's body within a limit, for the API's handlers."""

from __future__ import annotations

from starlette.requests import Request


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or ``None`` when it is larger than ``limit`` bytes.

    Refused from ``Content-Length`` before a byte is read, or (chunked) as
    soon as the bytes received pass the limit: never held whole first.
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return None
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
