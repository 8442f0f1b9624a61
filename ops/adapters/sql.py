"""Adapter: the database that holds read models (and their tracking rows): SQLite or PostgreSQL.

SQL is written once with ``?`` placeholders and portable syntax (``INSERT ... ON CONFLICT``
works on both); the PostgreSQL adapter translates placeholders. Each projection writes its
rows and its tracking position in one transaction, which is what makes it exactly-once.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Connection errors a runner survives by reconnecting (psycopg's are added when it loads).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)


class Tx(ABC):
    """One open transaction: execute statements, read rows as dicts."""

    dialect: str

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the affected row count."""

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abstractmethod
    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None


class ViewDB(ABC):
    """A pool of connections to the read-model database (port: ``domain.model.ports.ViewDB``)."""

    dialect: str

    @property
    def transient_errors(self) -> tuple[type[BaseException], ...]:
        """Connection errors a reader survives by reconnecting."""
        return TRANSIENT_ERRORS

    @abstractmethod
    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A read-write transaction, committed on success and rolled back on error."""

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.transaction() as tx:
            return tx.fetchall(sql, params)

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        with self.transaction() as tx:
            return tx.fetchone(sql, params)

    @abstractmethod
    def close(self) -> None: ...


# -- SQLite -----------------------------------------------------------------------------------
class _SQLiteTx(Tx):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, tuple(params)).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql, tuple(params))
        names = [d[0] for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class SQLiteViewDB(ViewDB):
    """One connection per thread to a WAL-mode SQLite file (the embedded default)."""

    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        conn = self._conn()
        # IMMEDIATE takes the write lock up front, so two writers queue instead of deadlocking.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield _SQLiteTx(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


# -- PostgreSQL -------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\?")


def to_pg(sql: str) -> str:
    """Translate ``?`` placeholders (our SQL never has a literal ``?`` or ``%``)."""
    return _PLACEHOLDER.sub("%s", sql)


class _PgTx(Tx):
    dialect = "postgres"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.conn.cursor() as cur:
            cur.execute(to_pg(sql), tuple(params))
            return cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(to_pg(sql), rows)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            cur.execute(to_pg(sql), tuple(params))
            return list(cur.fetchall())


class PostgresViewDB(ViewDB):
    """A psycopg pool; ``schema`` isolates one deployment (or one test run) from another."""

    dialect = "postgres"

    def __init__(self, conninfo: str, *, schema: str = "public", pool_max: int = 8) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.conninfo = conninfo
        self.schema = schema
        self.pool = ConnectionPool(
            conninfo, min_size=1, max_size=pool_max, open=True, check=ConnectionPool.check_connection,
            kwargs={"row_factory": dict_row, "options": f"-c search_path={schema}"},
        )

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self.pool.connection() as conn, conn.transaction():
            yield _PgTx(conn)

    def close(self) -> None:
        self.pool.close()


def _register_psycopg_errors() -> None:
    global TRANSIENT_ERRORS
    try:
        import psycopg
        import psycopg_pool
    except ImportError:  # pragma: no cover - psycopg is a hard dependency
        return
    TRANSIENT_ERRORS = (*TRANSIENT_ERRORS, psycopg.OperationalError, psycopg.InterfaceError,
                        psycopg_pool.PoolTimeout)


_register_psycopg_errors()
