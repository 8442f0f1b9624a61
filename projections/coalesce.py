"""Write coalescing for rebuilds: consecutive INSERTs of one statement sent as one ``executemany``.

A rebuild applies thousands of events per transaction, and most handlers write one small row
per event with its own statement (the audit log: one INSERT per event). Per statement a round
trip costs far more than the row, so :class:`CoalescingTx` holds back INSERTs and sends each
run of the same statement text as one ``executemany`` (in a microbenchmark on the busy machine,
5,000 INSERTs took 4.2 s one by one and 0.23 s as one ``executemany`` on PostgreSQL; in the replay
bench the audit log rebuilds about 5 times faster, docs/benchmarks.md). Long runs go as multi-row
VALUES, or on PostgreSQL as one COPY when the INSERT has no conflict clause (``COPY_ROWS``).

Semantics are those of the wrapped transaction, in the same order:

* only statements that start with ``INSERT`` and have no ``RETURNING`` are held back;
  anything else (UPDATE, DELETE, SELECT, every ``fetch``) first sends everything held back,
  so a handler always reads its own writes and statements run in the order they were issued;
* ``execute`` returns a :class:`LazyCount`: when a handler looks at it (``bool``, ``==``,
  ``int``...) while its statement is still held back, everything before it is sent and the
  statement runs alone, giving its own row count. Held-back statements that nobody looks at
  are only ever counted as a group, which is all an INSERT-and-forget handler needs;
* the runner sends everything before it moves the tracking row (an UPDATE), so the batch
  commits whole or not at all, exactly as without coalescing.

One difference: an error in a held-back INSERT surfaces when the run is sent (at a later
event of the same batch), so ``failed_event`` may name a later event. That is why only
rebuilds into a scratch store use it (``ops.audit_replay``), never a live runner.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from domain.model.ports import Tx  # the wrapped transaction; this class has the same methods

#: ``INSERT INTO t [(cols)] VALUES (one row of ?s and literals) [ON CONFLICT ...]``: a run of
#: these is sent as statements of ``MULTI_ROWS`` rows each (multi-row VALUES), all of the same
#: text in one ``executemany`` (parsed once, pipelined), unless it updates on conflict
#: (PostgreSQL refuses a row updated twice by one statement, which rows one by one would allow).
#: Measured on PostgreSQL: 14 us a row one by one in an ``executemany``, 4 us in 100-row statements.
_ONE_ROW = re.compile(r"^(\s*INSERT\s+INTO\s+\w+(?:\s*\([^()]*\))?\s+VALUES\s*)(\([^()]*\))(.*)$",
                      re.IGNORECASE | re.DOTALL)
MULTI_ROWS = 100
MULTI_ROW_PARAMS = 30_000  # under SQLite's 32,766 variables and PostgreSQL's 65,535 parameters
#: A run of at least this many rows of a plain ``INSERT INTO t [(cols)] VALUES (?, ...)`` (no
#: ON CONFLICT, no literals) goes to PostgreSQL as one ``COPY t [(cols)] FROM STDIN``: the same
#: rows in the same order, each value converted by the same psycopg dumpers; a row that would
#: fail its INSERT fails the COPY (measured: 20,000 rows of 5 columns 0.06 s by COPY, 0.09 s in
#: 100-row statements). Not for ON CONFLICT: COPY has no conflict clause.
COPY_ROWS = 1_000
_TARGET = re.compile(r"^\s*INSERT\s+INTO\s+(\w+(?:\s*\([^()]*\))?)\s+VALUES\s*$", re.IGNORECASE | re.DOTALL)


def _multi_row(sql: str) -> tuple[str, str, str] | None:
    """(head, one row, tail) when a run of ``sql`` may be sent as multi-row VALUES."""
    match = _ONE_ROW.match(sql)
    if match is None or "DO UPDATE" in match.group(3).upper():
        return None
    return match.group(1), match.group(2), match.group(3)


class LazyCount:
    """The row count of one statement, known once someone asks for it."""

    __slots__ = ("_count", "_tx")

    def __init__(self, tx: CoalescingTx | None, count: int | None = None) -> None:
        self._tx, self._count = tx, count

    def value(self) -> int:
        if self._count is None:
            assert self._tx is not None
            self._tx._resolve(self)
        assert self._count is not None, "the row count of a coalesced INSERT was read after its run was sent"
        return self._count

    def __int__(self) -> int:
        return self.value()

    __index__ = __int__

    def __bool__(self) -> bool:
        return self.value() != 0

    def __eq__(self, other: object) -> bool:
        return self.value() == (int(other) if isinstance(other, LazyCount) else other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self.value())

    def __repr__(self) -> str:
        return f"LazyCount({self._count if self._count is not None else '?'})"


class CoalescingTx:
    """Wraps one open transaction of a read-model database (see the module docstring)."""

    def __init__(self, inner: Tx) -> None:
        self.inner = inner
        self.dialect = inner.dialect
        self._pending: list[tuple[str, tuple[Any, ...], LazyCount]] = []

    @staticmethod
    def _deferrable(sql: str) -> bool:
        head = sql.lstrip()[:6].upper()
        return head == "INSERT" and "RETURNING" not in sql.upper()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if not self._deferrable(sql):
            self.flush()
            return self.inner.execute(sql, params)
        count = LazyCount(self)
        self._pending.append((sql, tuple(params), count))
        return count  # type: ignore[return-value] - int-like: compares, converts and tests as the count

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not self._deferrable(sql):
            self.flush()
            self.inner.executemany(sql, rows)
            return
        for row in rows:
            self._pending.append((sql, tuple(row), LazyCount(None, 0)))  # executemany returns no count

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.flush()
        return self.inner.fetchall(sql, params)

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        self.flush()
        return self.inner.fetchone(sql, params)

    def flush(self) -> None:
        """Send everything held back, one ``executemany`` per run of the same statement."""
        pending, self._pending = self._pending, []
        self._send(pending)

    def _send(self, pending: list[tuple[str, tuple[Any, ...], LazyCount]]) -> None:
        start = 0
        while start < len(pending):
            sql = pending[start][0]
            end = start
            while end < len(pending) and pending[end][0] == sql:
                end += 1
            if end - start == 1:
                count = self.inner.execute(sql, pending[start][1])
                if pending[start][2]._count is None:
                    pending[start][2]._count = count
            else:
                self._send_run(sql, [p[1] for p in pending[start:end]])
            start = end

    def _send_run(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Consecutive rows of one INSERT: multi-row VALUES where the statement allows it, in
        order (a row conflicting with an earlier one of the same statement meets it as it would
        one statement later), else one ``executemany``."""
        parts = _multi_row(sql)
        width = len(rows[0])
        if parts is None or width == 0 or parts[1].count("?") != width or any(len(r) != width for r in rows):
            self.inner.executemany(sql, rows)
            return
        head, one, tail = parts
        if len(rows) >= COPY_ROWS and self._copy(head, one, tail, rows):
            return
        per = max(1, min(MULTI_ROWS, MULTI_ROW_PARAMS // width))
        full = len(rows) - len(rows) % per
        if full > per:
            self.inner.executemany(f"{head}{', '.join([one] * per)}{tail}",
                                   [[v for row in rows[at:at + per] for v in row] for at in range(0, full, per)])
        elif full:
            self.inner.execute(f"{head}{', '.join([one] * per)}{tail}", [v for row in rows[:full] for v in row])
        if full < len(rows):
            rest = rows[full:]
            self.inner.execute(f"{head}{', '.join([one] * len(rest))}{tail}", [v for row in rest for v in row])

    def _copy(self, head: str, one: str, tail: str, rows: list[tuple[Any, ...]]) -> bool:
        """Send ``rows`` by COPY when the statement and the store allow it (``COPY_ROWS``)."""
        conn = getattr(self.inner, "conn", None)
        target = _TARGET.match(head)
        if (self.dialect != "postgres" or conn is None or target is None or tail.strip()
                or one.replace(" ", "") != "(" + ",".join("?" * len(rows[0])) + ")"):
            return False
        with conn.cursor() as cur, cur.copy(f"COPY {target.group(1)} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return True

    def _resolve(self, count: LazyCount) -> None:
        """Run a held-back statement alone (after everything before it) to learn its count."""
        index = next((i for i, p in enumerate(self._pending) if p[2] is count), None)
        if index is None:
            return  # already sent in a run: its count stays unknown (asserted by LazyCount)
        before, (sql, params, _), after = self._pending[:index], self._pending[index], self._pending[index + 1:]
        self._pending = []
        self._send(before)
        count._count = self.inner.execute(sql, params)
        self._pending = after
