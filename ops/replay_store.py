"""The stores ``aimarket audit replay`` reads and writes (``ops.audit_replay``).

* :class:`Snapshot`: one read-only view of a read-model database that does not move while
  it is open (PostgreSQL: a ``REPEATABLE READ READ ONLY`` transaction; SQLite in WAL mode:
  a deferred transaction after its first read). The live tables, their tracking positions
  and the audit tree's stored leaves are all read from one snapshot, so the positions the
  replay stops at are exactly the ones the rows reflect, however far the live runners move
  on meanwhile. It never takes a write lock: the live runners keep going.
* :class:`ScratchStore`: where the projections are rebuilt. PostgreSQL: a fresh schema
  ``aimarket_replay_<random>`` on the same database; SQLite: a fresh file in a temporary
  directory. Dropped afterwards unless kept.
* :class:`FileLog`: an export of ``aimarket audit export`` served like the event store's
  recorder (``select_notifications``), so the same runner replays it.
"""

from __future__ import annotations

import bisect
import json
import re
import secrets
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from eventsourcing.persistence import Notification

from domain.model.audit_entry import EXPORT_TYPE
from domain.model.errors import InvalidInput
from ops.adapters.sql import PostgresViewDB, SQLiteViewDB, ViewDB
from ops.settings import Settings

STREAM_ROWS = 5_000  # rows fetched per round trip while a table is digested
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


def _ident(name: str) -> str:
    """A table or column name from our own DDL or the catalogue, checked before it is quoted."""
    if not _NAME_RE.match(name):
        raise InvalidInput(f"unexpected identifier {name!r}")
    return f'"{name}"'


class Snapshot:
    """A frozen, read-only view of one read-model database (see the module docstring)."""

    def __init__(self, dialect: str, conn: Any, schema: str = "") -> None:
        self.dialect, self.conn, self.schema = dialect, conn, schema

    @classmethod
    def postgres(cls, conninfo: str, schema: str) -> Snapshot:
        import psycopg
        from psycopg.rows import dict_row

        conn = psycopg.connect(conninfo, row_factory=dict_row, options=f"-c search_path={schema}")
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        conn.execute("SELECT 1")  # the snapshot starts here
        return cls("postgres", conn, schema)

    @classmethod
    def sqlite(cls, path: str | Path) -> Snapshot:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("BEGIN")  # deferred: the first read below fixes the snapshot, no write lock
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return cls("sqlite", conn)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if self.dialect == "postgres":
            return list(self.conn.execute(sql.replace("?", "%s"), tuple(params)).fetchall())
        return [dict(r) for r in self.conn.execute(sql, tuple(params)).fetchall()]

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        """Every row of a query without holding them all (a server-side cursor on PostgreSQL)."""
        if self.dialect == "postgres":
            with self.conn.cursor(name=f"replay_{secrets.token_hex(4)}") as cur:
                cur.itersize = STREAM_ROWS
                cur.execute(sql.replace("?", "%s"), tuple(params))
                yield from cur
            return
        cur = self.conn.execute(sql, tuple(params))
        while rows := cur.fetchmany(STREAM_ROWS):
            for r in rows:
                yield dict(r)

    def tables(self) -> set[str]:
        if self.dialect == "postgres":
            rows = self.fetchall("SELECT table_name AS name FROM information_schema.tables WHERE table_schema = ?",
                                 (self.schema,))
        else:
            rows = self.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r["name"] for r in rows}

    def columns(self, table: str) -> list[str]:
        if self.dialect == "postgres":
            rows = self.fetchall("SELECT column_name AS name FROM information_schema.columns WHERE table_schema = ?"
                                 " AND table_name = ? ORDER BY ordinal_position", (self.schema, table))
            return [r["name"] for r in rows]
        return [r["name"] for r in self.fetchall(f"PRAGMA table_info({_ident(table)})")]

    def primary_key(self, table: str) -> list[str]:
        if self.dialect == "postgres":
            rows = self.fetchall(
                "SELECT a.attname AS name FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = CAST(? AS regclass) AND i.indisprimary"
                " ORDER BY array_position(i.indkey, a.attnum)", (f"{_ident(self.schema)}.{_ident(table)}",))
            return [r["name"] for r in rows]
        rows = self.fetchall(f"PRAGMA table_info({_ident(table)})")
        return [r["name"] for r in sorted((r for r in rows if r["pk"]), key=lambda r: r["pk"])]

    def tracking(self) -> dict[str, int]:
        """Each live projection's position (none before its runner first ran)."""
        if "projection_tracking" not in self.tables():
            return {}
        return {r["name"]: int(r["position"]) for r in self.fetchall("SELECT name, position FROM projection_tracking")}

    def close(self) -> None:
        try:
            self.conn.rollback() if self.dialect == "postgres" else self.conn.execute("ROLLBACK")
        finally:
            self.conn.close()


class ScratchStore:
    """A fresh, empty read-model store beside the live one (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dropped = False
        if settings.embedded:
            self._dir = Path(tempfile.mkdtemp(prefix="aimarket_replay_"))
            self.where = str(self._dir / "views.sqlite")
            self.views: ViewDB = SQLiteViewDB(self.where)
            return
        import psycopg
        from psycopg import sql

        self.where = f"aimarket_replay_{secrets.token_hex(6)}"
        with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.where)))
        self.views = PostgresViewDB(settings.pg_conninfo(), schema=self.where, pool_max=8)  # a runner per thread

    def snapshot(self) -> Snapshot:
        if self.settings.embedded:
            return Snapshot.sqlite(self.where)
        return Snapshot.postgres(self.settings.pg_conninfo(), self.where)

    def drop(self) -> None:
        self.views.close()
        if self.settings.embedded:
            shutil.rmtree(self._dir, ignore_errors=True)
        else:
            import psycopg
            from psycopg import sql

            with psycopg.connect(self.settings.pg_conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.where)))
        self.dropped = True

    def close(self) -> None:
        """Keep the store (``--keep``): only the connections go."""
        self.views.close()


def live_snapshot(settings: Settings) -> Snapshot:
    if settings.embedded:
        return Snapshot.sqlite(settings.data_dir / "views.sqlite")
    return Snapshot.postgres(settings.pg_conninfo(), settings.db_schema)


class NoLock:
    """A scratch runner is the only writer of its store: nothing to lock, nothing to wait for."""

    def acquire(self) -> bool:
        return True

    def wait_for_events(self, timeout_s: float) -> None:
        return None

    def release(self) -> None:
        return None


class FileLog:
    """The entries of an export as the recorder's notifications (positions kept, holes too)."""

    def __init__(self, path: str | Path) -> None:
        self.notifications: list[Notification] = []
        with Path(path).open("rb") as fh:
            header = json.loads(fh.readline() or b"null")
            if not isinstance(header, dict) or header.get("type") != EXPORT_TYPE:
                raise InvalidInput(f"{path} is not an export of 'aimarket audit export'", param="file")
            for number, line in enumerate(fh, start=2):
                if line.strip():
                    self._add(json.loads(line), number)
        self.ids = [n.id for n in self.notifications]

    def _add(self, record: Any, number: int) -> None:
        if not isinstance(record, dict) or record.get("type") != "entry":
            return  # tree heads: the replay needs only the entries
        try:
            e = record["entry"]
            state = e["state"].encode("utf-8") if "state" in e else _b64(e["state_b64"])
            n = Notification(originator_id=uuid.UUID(e["originator_id"]), originator_version=int(e["originator_version"]),
                             topic=str(e["topic"]), state=state, id=int(e["position"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"line {number}: not an entry ({exc})", param="file") from None
        if self.notifications and n.id <= self.notifications[-1].id:
            raise InvalidInput(f"line {number}: position {n.id} is not after {self.notifications[-1].id}",
                               param="file")
        self.notifications.append(n)

    def max_notification_id(self) -> int:
        return self.ids[-1] if self.ids else 0

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None,
                             topics: Sequence[str] = (), *, inclusive_of_start: bool = True) -> list[Notification]:
        start = start or 0
        index = (bisect.bisect_left if inclusive_of_start else bisect.bisect_right)(self.ids, start)
        wanted, out = set(topics), []
        for n in self.notifications[index:]:
            if (stop is not None and n.id > stop) or len(out) >= limit:
                break
            if not wanted or n.topic in wanted:
                out.append(n)
        return out


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text, validate=True)
