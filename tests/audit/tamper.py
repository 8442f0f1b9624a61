"""Edits of a stored log behind the application's back, as an attacker with database access
would make them: on PostgreSQL (the events and snapshots tables of the test schema) and on
the embedded SQLite files."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from tests.conftest import pg_conninfo


class Tamper:
    """Raw access to one runtime's event and snapshot tables."""

    def __init__(self, runtime: Any) -> None:
        self.settings = runtime.settings
        self.pg = not runtime.settings.embedded
        self.events = runtime.market.recorder.events_table_name
        self.snapshots = runtime.market.snapshots.recorder.events_table_name

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        if self.pg:
            with psycopg.connect(pg_conninfo(), autocommit=False) as conn:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.settings.db_schema)))
                yield conn
                conn.commit()
        else:
            conn = sqlite3.connect(self.settings.data_dir / "events.sqlite")
            try:
                yield conn
                conn.commit()
            finally:
                conn.close()

    @property
    def _id(self) -> str:
        return "notification_id" if self.pg else "rowid"

    def _q(self, text: str) -> str:
        text = text.replace("{events}", self.events).replace("{snapshots}", self.snapshots).replace("{id}", self._id)
        return text.replace("?", "%s") if self.pg else text

    def row(self, position: int) -> tuple[Any, int, str, bytes]:
        with self._conn() as c:
            r = c.execute(self._q("SELECT originator_id, originator_version, topic, state FROM {events}"
                                  " WHERE {id} = ?"), (position,)).fetchone()
        return r[0], r[1], r[2], bytes(r[3])

    def positions(self) -> list[int]:
        with self._conn() as c:
            return [int(r[0]) for r in c.execute(self._q("SELECT {id} FROM {events} ORDER BY {id}")).fetchall()]

    def set_state(self, position: int, state: bytes) -> None:
        with self._conn() as c:
            c.execute(self._q("UPDATE {events} SET state = ? WHERE {id} = ?"), (state, position))

    def replace_in_state(self, position: int, old: bytes, new: bytes) -> None:
        state = self.row(position)[3]
        assert old in state, (old, state[:200])
        self.set_state(position, state.replace(old, new, 1))

    def set_originator(self, position: int, originator_id: uuid.UUID) -> None:
        value = originator_id if self.pg else originator_id.hex
        with self._conn() as c:
            c.execute(self._q("UPDATE {events} SET originator_id = ? WHERE {id} = ?"), (value, position))

    def delete(self, position: int) -> None:
        with self._conn() as c:
            c.execute(self._q("DELETE FROM {events} WHERE {id} = ?"), (position,))

    def insert(self, position: int, originator_id: uuid.UUID, version: int, topic: str, state: bytes) -> None:
        value = originator_id if self.pg else originator_id.hex
        columns = "notification_id, originator_id, originator_version, topic, state" if self.pg else \
            "rowid, originator_id, originator_version, topic, state"
        with self._conn() as c:
            c.execute(self._q(f"INSERT INTO {{events}} ({columns}) VALUES (?, ?, ?, ?, ?)"),
                      (position, value, version, topic, state))

    def swap(self, first: int, second: int) -> None:
        """Exchange what two positions hold (the positions stay)."""
        a, b = self.row(first), self.row(second)
        temp = uuid.uuid4() if self.pg else uuid.uuid4().hex  # (aggregate, version) is unique: park one first
        update = self._q("UPDATE {events} SET originator_id = ?, originator_version = ?, topic = ?, state = ?"
                         " WHERE {id} = ?")
        with self._conn() as c:
            c.execute(update, (temp, 1, a[2], a[3], first))
            c.execute(update, (*a, second))
            c.execute(update, (*b, first))

    def leaves(self) -> list[tuple[int, int]]:
        """(leaf index, log position) of every stored audit-tree leaf (PostgreSQL: the same schema)."""
        with self._conn() as c:
            return [(int(r[0]), int(r[1])) for r in c.execute(
                "SELECT leaf_index, position FROM audit_tree_leaves ORDER BY leaf_index").fetchall()]

    def set_leaf(self, leaf_index: int, leaf_hash: bytes) -> None:
        with self._conn() as c:
            c.execute(self._q("UPDATE audit_tree_leaves SET leaf_hash = ? WHERE leaf_index = ?"), (leaf_hash, leaf_index))

    def set_head(self, tree_size: int, root_hash: bytes, note: str) -> None:
        with self._conn() as c:
            c.execute(self._q("UPDATE audit_tree_heads SET root_hash = ?, note = ? WHERE tree_size = ?"),
                      (root_hash, note, tree_size))

    def snapshot_state(self, originator_id: uuid.UUID) -> tuple[int, bytes]:
        value = originator_id if self.pg else originator_id.hex
        with self._conn() as c:
            r = c.execute(self._q("SELECT originator_version, state FROM {snapshots} WHERE originator_id = ?"
                                  " ORDER BY originator_version DESC LIMIT 1"), (value,)).fetchone()
        return int(r[0]), bytes(r[1])

    def set_snapshot_state(self, originator_id: uuid.UUID, version: int, state: bytes) -> None:
        value = originator_id if self.pg else originator_id.hex
        with self._conn() as c:
            c.execute(self._q("UPDATE {snapshots} SET state = ? WHERE originator_id = ? AND originator_version = ?"),
                      (state, value, version))
