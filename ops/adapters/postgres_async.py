"""Adapter: saving a debit batch on PostgreSQL without blocking the event loop.

The event store library is synchronous: a commit made on the loop left it idle while
PostgreSQL answered (a sixth of the debit worker's time), and a commit thread fought the
loop for the GIL (slower still, docs/benchmarks.md). So the batcher's saves go through an
``asyncio`` psycopg connection instead, in the same transaction shape as the library's
recorder (``domain.app.eventsourcing_ext``: its lock statements, its NOTIFY, the array
insert, the same stored bytes). Snapshots, rare, are written by the application afterwards,
as after any save.

A batch with purchases also hands in what it read (``reads``: aggregate id -> the version
it decided on, None for one that must not exist yet). Under the same table lock, before the
insert, one query reads those aggregates' current versions; any difference raises
``StaleRead`` and the transaction records nothing. The lock is the one every writer of the
log takes (the recorder's), so nothing can change in between: a purchase commits against the
listing and device versions it was priced and signed with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from eventsourcing.persistence import IntegrityError
from psycopg.sql import SQL, Composed, Identifier

from domain.app.eventsourcing_ext import as_arrays, insert_statements
from domain.model.ports import StaleRead

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
        self._versions = versions_statement(market.recorder)
        self._conn: psycopg.AsyncConnection | None = None

    async def __call__(self, aggregates: Sequence[MarketAggregate], reads: dict[Any, int | None] | None = None) -> None:
        processing_event, stored = self.market.pending_stored_events(aggregates)
        await self._insert_stored(stored, reads or {})
        self.market.after_external_record(processing_event)

    async def _insert_stored(self, stored: list[Any], reads: dict[Any, int | None]) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        try:
            async with conn.pipeline(), conn.transaction():
                for statement in self._lock:
                    await conn.execute(statement, prepare=True)
                if reads:
                    cursor = await conn.execute(self._versions, (list(reads),), prepare=True)
                    current = {row[0]: row[1] for row in await cursor.fetchall()}
                    stale = [aggregate_id for aggregate_id, version in reads.items()
                             if current.get(aggregate_id) != version]
                    if stale:
                        raise StaleRead(stale)  # rolls the transaction back: nothing recorded
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


def versions_statement(recorder: Any) -> Composed:
    """The current version of each of some aggregates (ids as one array parameter)."""
    return SQL("SELECT originator_id, max(originator_version) FROM {schema}.{table} "
               "WHERE originator_id = ANY(%s::{id_type}[]) GROUP BY originator_id").format(
        schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name),
        id_type=SQL(recorder.datastore.originator_id_type))
