"""The seen-nonce store, shared by every host: a table in the read-model database.

``INSERT ... ON CONFLICT DO NOTHING`` is atomic on both SQLite and PostgreSQL, so two hosts
racing with the same ``jti`` cannot both succeed. Rows expire after their TTL; a sweep
deletes them (the check ignores expired rows, so a late sweep is harmless).
"""

from __future__ import annotations

from collections.abc import Callable

from domain.model.errors import TokenReplayed
from ops.adapters.sql import ViewDB
from projections.base import lock_ddl

DDL = "CREATE TABLE IF NOT EXISTS used_nonces (nonce_key TEXT PRIMARY KEY, expires_at_s BIGINT NOT NULL)"


class DbNonceStore:
    """Implements ``domain.model.ports.NonceStore`` over the read-model database."""

    def __init__(self, db: ViewDB, clock_s: Callable[[], int]) -> None:
        self.db = db
        self.clock_s = clock_s
        with db.transaction() as tx:
            lock_ddl(tx)
            tx.execute(DDL)

    def use_once(self, key: str, ttl_s: int) -> None:
        now_s = self.clock_s()
        with self.db.transaction() as tx:
            # An expired row is free again: replace it, but only if it has expired.
            tx.execute("DELETE FROM used_nonces WHERE nonce_key = ? AND expires_at_s <= ?", (key, now_s))
            inserted = tx.execute(
                "INSERT INTO used_nonces VALUES (?, ?) ON CONFLICT (nonce_key) DO NOTHING", (key, now_s + ttl_s)
            )
        if inserted != 1:
            raise TokenReplayed("this token or nonce has already been used")

    def sweep(self) -> int:
        with self.db.transaction() as tx:
            return tx.execute("DELETE FROM used_nonces WHERE expires_at_s <= ?", (self.clock_s(),))
