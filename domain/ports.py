"""Interfaces the application needs from the outside world (implemented in ``ops``)."""

from __future__ import annotations

from typing import Protocol


class NonceStore(Protocol):
    """Remembers single-use values (JWT ``jti``, message nonces) across all hosts."""

    def use_once(self, key: str, ttl_s: int) -> None:
        """Record ``key`` for ``ttl_s`` seconds; raise TokenReplayed if it was already used."""
