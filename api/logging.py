"""structlog set-up: JSON lines in production, console on a terminal; ids via contextvars."""

from __future__ import annotations

import logging
import sys

import structlog

_configured = False


def configure(fmt: str = "json") -> None:
    """Configure once per process (idempotent); called by factories, never at import."""
    global _configured
    if _configured:
        return
    renderer = (structlog.dev.ConsoleRenderer() if fmt == "console" and sys.stderr.isatty()
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    _configured = True
