"""Keep tokens out of logs: mask token query values, bearer credentials and JWT-shaped strings.

uvicorn's access log prints each request's query string, and a WebSocket
token travels as ``?token=``; the server installs :class:`RedactTokens` on
its loggers (:func:`install_log_redaction`) at startup.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable

__all__ = ["REDACTED", "RedactTokens", "install_log_redaction", "redact"]

_TOKEN_PARAM_RE = re.compile(r"(?i)((?:access_)?token(?:=|%3D))[^&\s\"'#;,)\]]*")
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """``text`` with token query values, bearer credentials and JWT-shaped strings masked."""
    text = _TOKEN_PARAM_RE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return _JWT_RE.sub(REDACTED, text)


def _redact_value(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


class RedactTokens(logging.Filter):
    """Mask tokens in log records (uvicorn's access log prints the query string).

    Rewrites ``msg`` and each string argument in place, keeping the argument
    tuple's shape, because uvicorn's access formatter unpacks ``args``.
    Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_value(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_value(v) for k, v in record.args.items()}
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error", "collab")


def install_log_redaction(logger_names: Iterable[str] = _LOGGERS) -> RedactTokens:
    """Add one :class:`RedactTokens` to the named loggers and their handlers (idempotent).

    Logger filters see only records logged on that very logger, handler
    filters see propagated ones too, so both get it. Call it after uvicorn
    configured logging (e.g. in the app's startup), since dictConfig
    replaces handlers.
    """
    flt = RedactTokens()
    for name in logger_names:
        logger = logging.getLogger(name)
        targets: list[logging.Filterer] = [logger, *logger.handlers]
        for target in targets:
            if not any(isinstance(f, RedactTokens) for f in target.filters):
                target.addFilter(flt)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactTokens) for f in handler.filters):
            handler.addFilter(flt)
    return flt
