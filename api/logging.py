"""structlog set-up: JSON lines in production, console on a terminal; ids via contextvars."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import structlog

from api.jsonbytes import json_bytes

_configured = False
_lines: Any = None  # the binary stream JSON lines go to, once configured


def configure(fmt: str = "json") -> None:
    """Configure once per process (idempotent); called by factories, never at import."""
    global _configured, _lines
    if _configured:
        return
    # JSON lines rendered by orjson straight to bytes: one line per request is on the hot
    # path, and the standard json module made it a tenth of a debit's CPU.
    binary = getattr(sys.stderr, "buffer", None)
    if fmt == "console" and sys.stderr.isatty():
        renderer, factory = structlog.dev.ConsoleRenderer(), structlog.PrintLoggerFactory(sys.stderr)
    elif binary is not None:
        renderer, factory = structlog.processors.JSONRenderer(json_bytes), structlog.BytesLoggerFactory(binary)
        _lines = binary
    else:
        renderer, factory = structlog.processors.JSONRenderer(), structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=factory,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    _configured = True


def request_line(fields: dict[str, Any]) -> None:
    """The one line per request: the same JSON shape as every other line, written without
    structlog's processor chain, which cost as much as the rest of the line on this path."""
    if _lines is None:
        structlog.get_logger("api").info("request", **fields)
        return
    fields["event"] = "request"
    fields["level"] = "info"
    fields["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    _lines.write(json_bytes(fields) + b"\n")
    _lines.flush()
