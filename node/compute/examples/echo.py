"""The trivial pipeline: answers its input (the benchmark's callable)."""

from __future__ import annotations

from typing import Any


def echo(value: Any) -> Any:
    """Return the input unchanged."""
    return value
