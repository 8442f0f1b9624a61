"""Saving a debit batch on PostgreSQL without blocking the event loop.

The event store library is synchronous: a commit made on the loop left it idle while
PostgreSQL answered (a sixth of the debit worker's time), and a commit thread fought the
loop for the GIL (slower still, docs/benchmarks.md). So the batcher's saves go through an
``asyncio`` psycopg connection instead, in the same transaction shape as the library's
recorder: the recorder's own statements (``SET LOCAL lock_timeout``, the ``EXCLUSIVE`` table
lock that keeps notification ids in commit order, the ``NOTIFY`` that wakes followers) and
its mapper (the same stored bytes), with the insert of ``ops.pg_recorder``. Snapshots, rare,
are written by the application afterwards, as after any save.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import IntegrityError
from psycopg.sql import SQL, Identifier

from ops.pg_recorder import as_arrays

if TYPE_CHECKING:
    from domain.application import Marketplace
    from domain.base import MarketAggregate


class AsyncPgSaver:
    """``await saver(aggregates)``: their pending events, one transaction, on this loop."""

    def __init__(self, market: Marketplace, conninfo: str) -> None:
        self.market = market
        self.conninfo = conninfo
        recorder = market.recorder
        self._lock = list(recorder.lock_table_statements)
        self._notify = SQL("NOTIFY {0}").format(Identifier(recorder.channel_name))
        self._insert = recorder.insert_arrays_statement  # ops.pg_recorder.ArrayInsertRecorder
        self._conn: psycopg.AsyncConnection | None = None

    async def __call__(self, aggregates: Sequence[MarketAggregate]) -> None:
        processing_event: ProcessingEvent = ProcessingEvent()
        for aggregate in aggregates:
            processing_event.events.extend(aggregate.collect_events())
            processing_event.aggregates[aggregate.id] = aggregate
        to_stored = self.market.mapper.to_stored_event
        stored = [to_stored(event) for event in processing_event.events]
        await self._insert_stored(stored)
        self.market._take_snapshots(processing_event)

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
