"""The projection base: declared topics, one handler per event type, its own tables.

A projection never writes outside the transaction it is handed; the runner writes the
tracking position in that same transaction, so each event lands exactly once even when a
runner dies between two statements. Time-based read models use event timestamps, never
the wall clock, so a rebuild yields the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from eventsourcing.utils import get_topic

from domain.model.ports import Tx

TRACKING_DDL = (
    "CREATE TABLE IF NOT EXISTS projection_tracking ("
    " name TEXT PRIMARY KEY, position BIGINT NOT NULL, version INTEGER NOT NULL)"
)


class Projection:
    """Subclass with ``name``, ``version``, ``event_types``, ``tables``, ``ddl`` and handlers.

    Bump ``version`` when the tables or handlers change: the runner rebuilds from 0.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    # Event classes this projection handles; empty means "every event" (e.g. the audit log).
    event_types: ClassVar[Sequence[type]] = ()
    tables: ClassVar[Sequence[str]] = ()
    #: Set by a rebuild into a scratch store (``ProjectionRunner(buffer_writes=True)``): a
    #: projection may then hold rows of the batch in memory and write them in :meth:`flush`.
    #: Only how rows reach the database changes, never what a handler decides.
    buffered: bool = False

    @property
    def topics(self) -> list[str]:
        return [get_topic(cls) for cls in self.event_types]

    def ddl(self, dialect: str) -> list[str]:
        """CREATE statements for this projection's tables (idempotent)."""
        raise NotImplementedError

    def create_tables(self, tx: Tx) -> None:
        for statement in self.ddl(tx.dialect):
            tx.execute(statement)

    def drop_tables(self, tx: Tx) -> None:
        for table in self.tables:
            tx.execute(f"DROP TABLE IF EXISTS {table}")

    def process(self, event: Any, tx: Tx, position: int) -> None:
        """Apply one event. Subclasses declare their own ``@singledispatchmethod process``
        with one registered handler per event type (a shared dispatcher would leak handlers
        between projections); events without a handler are ignored."""
        raise NotImplementedError

    def flush(self, tx: Tx) -> None:
        """Write what the batch held back (``buffered`` only); the runner calls it before it
        moves the tracking row, in the same transaction, so the batch still commits whole."""


def read_position(tx: Tx, name: str) -> tuple[int, int] | None:
    row = tx.fetchone("SELECT position, version FROM projection_tracking WHERE name = ?", (name,))
    return None if row is None else (int(row["position"]), int(row["version"]))


DDL_LOCK_KEY = 7_346_112_001


def lock_ddl(tx: Tx) -> None:
    """Serialise schema changes across hosts (concurrent CREATE TABLE can collide on PostgreSQL)."""
    if tx.dialect == "postgres":
        tx.execute("SELECT pg_advisory_xact_lock(?)", (DDL_LOCK_KEY,))
