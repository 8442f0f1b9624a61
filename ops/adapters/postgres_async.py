"""Adapter: saving a debit batch on PostgreSQL without blocking the event loop.

The event store library is synchronous: a commit made on the loop left it idle while
PostgreSQL answered (a sixth of the debit worker's time), and a commit thread fought the
loop for the GIL (slower still, docs/benchmarks.md). So the batcher's saves go through an
``asyncio`` psycopg connection instead, in the same transaction shape as the library's
recorder (``domain.app.eventsourcing_ext``: its lock statements, its NOTIFY, the array
insert, the same stored bytes). Snapshots, rare, are written by the application afterwards,
as after any save.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from eventsourcing.persistence import IntegrityError

from domain.app.eventsourcing_ext import as_arrays, insert_statements

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.base import MarketAggregate


class AsyncPgSaver:
    """``await saver(aggregates)``: their pending events, one transaction, on this loop
    (port: ``domain.model.ports.BatchSaver``)."""

    def __init__(self, market: Marketplace, conninfo: str) -> None:
        self.market = market
        self.conninfo = conninfo
        self._lock, self._notify, self._insert = insert_statements(market.recorder)  # type: ignore[arg-type]
        self._conn: psycopg.AsyncConnection | None = None

    async def __call__(self, aggregates: Sequence[MarketAggregate]) -> None:
        processing_event, stored = self.market.pending_stored_events(aggregates)
        await self._insert_stored(stored)
        self.market.after_external_record(processing_event)

    async def _insert_stored(self, stored: list[Any]) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        try:
            async with conn.pipeline(), conn.transaction():
                for statement in self._lock:
                    await conn.execute(statement, prepare=True)
                await conn.execute(self._notify)
                await conn.execute(self._insert, as_arrays(stored), prepare=True)
        except psycopg.errors.UniqueViolation as exc:  # another writer took a version first
            raise IntegrityError(exc) from exc
        except psycopg.OperationalError:
            await conn.close()  # reconnect on the next batch
            raise

    def close(self) -> None:
        """Drop the connection (from any thread: the loop that opened it may be gone)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()
