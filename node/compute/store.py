"""Metered sessions on disk: ``<home>/compute.sqlite`` (WAL, ``synchronous=FULL``), group-committed.

Tables: ``sessions`` (one row per invoke token: the binding, the state, the final receipt),
``counters`` (what each receipt moves, in a row of integers so a commit rewrites little),
``countersigned`` (the buyer's latest countersignature), ``receipts`` (every receipt the node signed, by ``(jti, seq)``)
and ``pending_outbox`` (entries for the node's outbox, written in the same transaction as the
state they report). Every receipt is committed **before** the buyer sees it or its output, so a
node killed at any instant restarts with every receipt it handed out (none lost) and never reuses
a ``seq`` (none billed twice); a call that was running when it died was never billed.

Writes go through one writer thread that commits whatever is queued as one transaction (one
fsync for many calls: group commit); :meth:`SessionStore.commit` returns a future the event loop
awaits. After a commit the writer moves pending entries to the node's one outbox
(``node.outbox.Outbox``, ``<home>/outbox.sqlite``, shared with the delivery server and its
uplink, which delivers them: one hash chain per device at the hub) and deletes them. The two
files cannot commit together (SQLite in WAL mode is atomic per file), so an entry appended just
before a crash is found again at start and not appended twice (:meth:`SessionStore.recover`:
every ``invoke_*`` body is unique, a ``jti`` and a time or a signed rejection's nonce).
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from node.outbox import Outbox

_SCHEMA = (
    # what never changes (the binding), and the end: written once
    "CREATE TABLE IF NOT EXISTS sessions (jti TEXT PRIMARY KEY, invocation_id TEXT NOT NULL, listing_id TEXT NOT NULL,"
    " jkt TEXT NOT NULL, token TEXT NOT NULL, bound_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'open', end_reason TEXT, final_receipt TEXT)",
    # what every receipt moves: a small row, so a commit rewrites little
    "CREATE TABLE IF NOT EXISTS counters (jti TEXT PRIMARY KEY, seq INTEGER NOT NULL DEFAULT 0,"
    " cumulative_units INTEGER NOT NULL DEFAULT 0, cumulative_minor INTEGER NOT NULL DEFAULT 0,"
    " bytes_in INTEGER NOT NULL DEFAULT 0, bytes_out INTEGER NOT NULL DEFAULT 0, calls INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS countersigned (jti TEXT PRIMARY KEY, seq INTEGER NOT NULL, amount_minor INTEGER NOT NULL,"
    " countersignature TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS receipts (jti TEXT NOT NULL, seq INTEGER NOT NULL, receipt TEXT NOT NULL,"
    " PRIMARY KEY (jti, seq))",
    "CREATE TABLE IF NOT EXISTS pending_outbox (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL)",
)
_COUNTERS = ("seq", "cumulative_units", "cumulative_minor", "bytes_in", "bytes_out", "calls")
_STOP = object()


@dataclass
class SessionRow:
    """One session as stored."""

    jti: str
    invocation_id: str
    listing_id: str
    jkt: str
    token: str
    bound_ms: int
    deadline_ms: int
    seq: int = 0
    cumulative_units: int = 0
    cumulative_minor: int = 0
    countersigned_seq: int = 0
    countersigned_minor: int = 0
    countersignature: dict[str, Any] | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    calls: int = 0
    state: str = "open"
    end_reason: str | None = None
    last_receipt: dict[str, Any] | None = None
    final_receipt: dict[str, Any] | None = None


_SELECT = (
    "SELECT s.jti, s.invocation_id, s.listing_id, s.jkt, s.token, s.bound_ms, s.deadline_ms, c.seq, c.cumulative_units,"
    " c.cumulative_minor, COALESCE(k.seq, 0), COALESCE(k.amount_minor, 0), k.countersignature, c.bytes_in,"
    " c.bytes_out, c.calls, s.state, s.end_reason,"
    " (SELECT r.receipt FROM receipts r WHERE r.jti = s.jti ORDER BY r.seq DESC LIMIT 1), s.final_receipt"
    " FROM sessions s JOIN counters c ON c.jti = s.jti LEFT JOIN countersigned k ON k.jti = s.jti")


def _row(values: tuple[Any, ...]) -> SessionRow:
    row = SessionRow(*values)
    for name in ("countersignature", "last_receipt", "final_receipt"):
        text = getattr(row, name)
        setattr(row, name, json.loads(text) if text else None)
    return row


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode("utf-8")


# -- the operations a transaction may hold (data: the writer applies a batch with executemany) --
Op = tuple[Any, ...]


def op_bind(row: SessionRow) -> Op:
    return ("bind", (row.jti, row.invocation_id, row.listing_id, row.jkt, row.token, row.bound_ms, row.deadline_ms))


def op_receipt(jti: str, receipt: dict[str, Any], counters: dict[str, int], *, final_reason: str | None = None,
               text: str | None = None) -> Op:
    """Record a signed receipt (``text``: its JSON, when the caller has it already) and the
    counters after it (and the end of the session if ``final_reason``)."""
    return ("receipt", jti, counters["seq"], text if text is not None else _json(receipt),
            tuple(counters[name] for name in _COUNTERS), final_reason)


def op_countersigned(jti: str, seq: int, amount_minor: int, countersignature: dict[str, Any]) -> Op:
    return ("countersigned", (jti, seq, amount_minor, _json(countersignature)))


def op_outbox(kind: str, body: dict[str, Any], now_ms: int) -> Op:
    return ("outbox", (kind, _json(body), now_ms))


def apply(db: sqlite3.Connection, ops: list[Op]) -> None:
    """Apply ``ops`` (in one open transaction): a few statements for the whole batch."""
    binds = [op[1] for op in ops if op[0] == "bind"]
    receipts = [op for op in ops if op[0] == "receipt"]
    if binds:
        db.executemany("INSERT INTO sessions (jti, invocation_id, listing_id, jkt, token, bound_ms, deadline_ms)"
                       " VALUES (?,?,?,?,?,?,?)", binds)
        db.executemany("INSERT INTO counters (jti) VALUES (?)", [(b[0],) for b in binds])
    if receipts:
        db.executemany("INSERT INTO receipts (jti, seq, receipt) VALUES (?,?,?)", [r[1:4] for r in receipts])
        latest = {r[1]: r for r in receipts}  # the counters after a session's last receipt of the batch
        db.executemany("UPDATE counters SET seq = ?, cumulative_units = ?, cumulative_minor = ?, bytes_in = ?,"
                       " bytes_out = ?, calls = ? WHERE jti = ?", [(*r[4], r[1]) for r in latest.values()])
        finals = [(r[5], r[3], r[1]) for r in receipts if r[5] is not None]
        if finals:
            db.executemany("UPDATE sessions SET state = 'final', end_reason = ?, final_receipt = ? WHERE jti = ?",
                           finals)
    countersigned = [op[1] for op in ops if op[0] == "countersigned"]
    if countersigned:
        db.executemany("INSERT INTO countersigned (jti, seq, amount_minor, countersignature) VALUES (?,?,?,?)"
                       " ON CONFLICT (jti) DO UPDATE SET seq = excluded.seq, amount_minor = excluded.amount_minor,"
                       " countersignature = excluded.countersignature WHERE excluded.seq > countersigned.seq",
                       countersigned)
    entries = [op[1] for op in ops if op[0] == "outbox"]
    if entries:
        db.executemany("INSERT INTO pending_outbox (kind, body, created_ms) VALUES (?,?,?)", entries)


class SessionStore:
    """Sessions, receipts and the compute outbox. Reads run on the caller's thread (WAL lets
    them run beside the writer); every write goes through :meth:`commit`."""

    def __init__(self, path: str | Path, outbox_path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._read = self._connect()
        for statement in _SCHEMA:
            self._read.execute(statement)
        self.outbox = Outbox(outbox_path)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: list[tuple[tuple[Op, ...], asyncio.Future[None]]] = []
        self._writing = False
        self._thread: threading.Thread | None = None
        self.commits = 0  # transactions (fsyncs) so far, for the bench

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    # -- reads ------------------------------------------------------------------------------
    def load(self, jti: str) -> SessionRow | None:
        found = self._read.execute(f"{_SELECT} WHERE s.jti = ?", (jti,)).fetchone()
        return _row(found) if found else None

    def open_sessions(self) -> list[SessionRow]:
        rows = self._read.execute(f"{_SELECT} WHERE s.state = 'open'").fetchall()
        return [_row(r) for r in rows]

    def receipts(self, jti: str) -> list[dict[str, Any]]:
        rows = self._read.execute("SELECT receipt FROM receipts WHERE jti = ? ORDER BY seq", (jti,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def receipt(self, jti: str, seq: int) -> dict[str, Any] | None:
        found = self._read.execute("SELECT receipt FROM receipts WHERE jti = ? AND seq = ?", (jti, seq)).fetchone()
        return json.loads(found[0]) if found else None

    # -- writes -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (after :meth:`recover`)."""
        self._thread = threading.Thread(target=self._writer, name="compute-store", daemon=True)
        self._thread.start()

    def commit(self, *ops: Op) -> asyncio.Future[None]:
        """Queue ``ops`` as one unit of the next transaction; the future resolves once it is durable.

        At most one transaction is in the writer's hands at a time; what is queued meanwhile goes
        in the next one, whole (group commit: the writer thread wakes, and takes the interpreter
        lock, once per transaction, not once per call)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((ops, future))
        if not self._writing:
            self._writing = True
            loop.call_soon(self._hand_over)
        return future

    def _hand_over(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._queue.put(batch)
        else:
            self._writing = False

    def commit_now(self, *ops: Op) -> None:
        """Apply ``ops`` in one transaction on this thread (start-up and tests, never with the
        writer running), then move pending outbox entries."""
        db = self._read
        db.execute("BEGIN IMMEDIATE")
        try:
            apply(db, list(ops))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._flush_outbox(db)

    def _writer(self) -> None:
        db = self._connect()
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                break
            error: BaseException | None = None
            try:
                db.execute("BEGIN IMMEDIATE")
                apply(db, [op for ops, _ in batch for op in ops])
                db.execute("COMMIT")
                self.commits += 1
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter of the batch
                error = exc
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if error is None and any(op[0] == "outbox" for ops, _ in batch for op in ops):
                try:
                    self._flush_outbox(db)
                except (sqlite3.Error, OSError) as exc:  # the entries stay pending: moved next time, or at start
                    print(f'{{"compute": "outbox_flush_failed", "error": {type(exc).__name__!r}}}', file=sys.stderr)
            self._resolve(batch, error)
        db.close()

    def _resolve(self, batch: list[tuple[Any, asyncio.Future[None]]], error: BaseException | None) -> None:
        loop = batch[0][1].get_loop()

        def done() -> None:
            for _, future in batch:  # in queue order: waiters resume in the order they committed
                if not future.done():
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
            self._hand_over()  # the next transaction: whatever was queued meanwhile
        try:
            loop.call_soon_threadsafe(done)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _flush_outbox(self, db: sqlite3.Connection) -> None:
        for row_id, kind, body, created_ms in db.execute(
                "SELECT id, kind, body, created_ms FROM pending_outbox ORDER BY id").fetchall():
            self.outbox.append(kind, json.loads(body), created_ms)
            db.execute("DELETE FROM pending_outbox WHERE id = ?", (row_id,))

    def recover(self) -> int:
        """At start: move entries a crash left pending, skipping those that reached the outbox
        before it (same kind and body). Returns how many were appended now."""
        pending = self._read.execute("SELECT id, kind, body, created_ms FROM pending_outbox ORDER BY id").fetchall()
        seen = {(e.kind, orjson.dumps(e.body, option=orjson.OPT_SORT_KEYS)) for e in self.outbox.entries()
                if e.kind.startswith("invoke_")} if pending else set()
        appended = 0
        for row_id, kind, body, created_ms in pending:
            parsed = json.loads(body)
            if (kind, orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS)) not in seen:
                self.outbox.append(kind, parsed, created_ms)
                appended += 1
            self._read.execute("DELETE FROM pending_outbox WHERE id = ?", (row_id,))
        return appended

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(30)
            self._thread = None
        self._read.close()
        self.outbox.close()
