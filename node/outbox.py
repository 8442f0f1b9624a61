"""The node's durable outbox: what the hub must hear, kept until the hub took it.

SQLite (``<home>/outbox.sqlite``, WAL, ``synchronous=FULL``). Entries are appended in order
and hash-chained, so the hub (which de-duplicates by ``seq`` and checks the chain) can resume
from its last ``{seq, entry_hash}`` and notice a gap or an edit::

    entry_hash = SHA-256( lp("aimarket/outbox/v1") || lp(prev_hash) || u64be(seq) || lp(kind)
                          || lp(JCS(body)) || u64be(created_ms) )      prev_hash of seq 1 = 32 zero bytes

(``domain.model.envelope.entry_hash``: the hub computes the same). Kinds: ``redemption`` (a
token bound), ``receipt``, ``confirmation``, ``refusal`` (a bound token tried by another key or
past its limits), written by the delivery server and the buyer; ``heartbeat`` (``aim-node
serve``, periodically); ``invoke_bound``, ``invoke_final``, ``invoke_rejection``, moved here by
the compute server (``aim-node compute serve``, ``node/compute/store.py``), another process on
the same file: one chain per device.

Delivery is at-least-once and in order (:meth:`Outbox.deliver_batches`; ``node/delivery/uplink.py``
sends to the hub). What a failure does to the first entry not taken:

* anything transient (no answer, 5xx, a lost race): retried after an exponential back-off
  (1 s doubling to 5 min, ±20 %), the entries behind it wait;
* :class:`ResumeFrom` (the hub lacks earlier entries: its database was restored from a
  backup): the entries from that ``seq`` are delivered again;
* :class:`EntryRefused` (the hub refused it for good: a key it no longer accepts, a fork):
  the outbox is **parked** at that entry, with the code kept. Nothing is retried in a loop
  (every later entry would be refused as a gap anyway) until :meth:`unpark`: ``aim-node outbox
  retry``, or once at each start of ``aim-node serve``.

Several connections may use one file (the server's and the uplink thread's): appends take the
write lock (``BEGIN IMMEDIATE``), so ``seq`` stays dense.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.model.envelope import GENESIS, OUTBOX_LABEL, entry_hash
from domain.model.jcs import canonical_json

LABEL = OUTBOX_LABEL
BACKOFF_BASE_MS = 1000
BACKOFF_MAX_MS = 300_000
__all__ = ["GENESIS", "LABEL", "BatchFailed", "Entry", "EntryRefused", "Outbox", "OutboxCorrupt", "ResumeFrom",
           "backoff_ms", "entry_hash"]


def backoff_ms(attempts: int) -> int:
    """Delay before retry number ``attempts`` (≥ 1): doubling from 1 s, capped at 5 min, ±20 % jitter."""
    delay = min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** min(attempts - 1, 20))
    return int(delay * random.uniform(0.8, 1.2))


@dataclass(frozen=True, slots=True)
class Entry:
    """One outbox entry, as handed to a sink."""

    seq: int
    kind: str
    body: dict[str, Any]
    prev_hash: str
    entry_hash: str
    created_ms: int
    attempts: int


class OutboxCorrupt(Exception):
    """Raised by :meth:`Outbox.verify_chain` when the chain does not hold."""


class EntryRefused(Exception):
    """A sink's answer: the receiver refused this entry for good (park the outbox here)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


class ResumeFrom(Exception):
    """A sink's answer: the receiver lacks the entries from ``seq`` on; deliver them again."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"resume from {seq}")
        self.seq = seq


class BatchFailed(Exception):
    """A sink's answer for a batch: the first ``taken`` entries were taken, then ``cause``."""

    def __init__(self, taken: int, cause: BaseException) -> None:
        super().__init__(f"{taken} taken, then {cause!r}")
        self.taken, self.cause = taken, cause


_COLUMNS = "seq, kind, body, prev_hash, entry_hash, created_ms, attempts"


class Outbox:
    """The durable, hash-chained outbox."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL,"
            " prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL, created_ms INTEGER NOT NULL,"
            " attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL DEFAULT 0,"
            " delivered_ms INTEGER)")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}
        for name, kind in (("refused_code", "TEXT"), ("refused_ms", "INTEGER")):  # outboxes made before parking
            if name not in columns:
                try:
                    self._db.execute(f"ALTER TABLE entries ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError:  # another connection added it first
                    pass

    def close(self) -> None:
        self._db.close()

    def append(self, kind: str, body: dict[str, Any], now_ms: int) -> Entry:
        """Append one entry durably (committed and fsynced when this returns)."""
        body_jcs = canonical_json(body, allow_floats=False)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            last = db.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (last[0] + 1, bytes.fromhex(last[1])) if last else (1, GENESIS)
            digest = entry_hash(prev, seq, kind, body_jcs, now_ms).hex()
            db.execute("INSERT INTO entries (seq, kind, body, prev_hash, entry_hash, created_ms) VALUES (?,?,?,?,?,?)",
                       (seq, kind, body_jcs.decode("utf-8"), prev.hex(), digest, now_ms))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Entry(seq, kind, body, prev.hex(), digest, now_ms, 0)

    def _entries(self, where: str, args: tuple[Any, ...], limit: int = -1) -> list[Entry]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries {where} ORDER BY seq LIMIT ?",  # noqa: S608 - fixed
                                (*args, limit)).fetchall()
        return [Entry(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def entries(self, *, kind: str | None = None) -> list[Entry]:
        """Every entry (optionally of one kind), in order."""
        return self._entries("WHERE kind = ?", (kind,)) if kind else self._entries("", ())

    def pending(self) -> list[Entry]:
        """Entries the receiver has not taken yet."""
        return self._entries("WHERE delivered_ms IS NULL", ())

    def head(self) -> tuple[int, str]:
        """``(seq, entry_hash)`` of the last entry (``(0, zeros)`` when empty)."""
        row = self._db.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS.hex())

    def status(self) -> dict[str, Any]:
        """Counts, the head, and where the outbox is parked (None when it is not)."""
        total, pending = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(delivered_ms IS NULL), 0) FROM entries").fetchone()
        parked = self._db.execute("SELECT seq, kind, refused_code, refused_ms, attempts FROM entries"
                                  " WHERE delivered_ms IS NULL AND refused_code IS NOT NULL ORDER BY seq LIMIT 1"
                                  ).fetchone()
        seq, digest = self.head()
        return {"entries": total, "pending": pending, "head": {"seq": seq, "entry_hash": digest},
                "parked": None if parked is None else {"seq": parked[0], "kind": parked[1], "code": parked[2],
                                                       "at_ms": parked[3], "attempts": parked[4]}}

    def deliver(self, sink: Callable[[Entry], None], now_ms: int, limit: int = 100) -> int:
        """Hand due entries to ``sink`` one by one, in order; stop at the first failure (see the
        module docstring for what each failure does). Returns how many the sink took."""
        def send(batch: list[Entry]) -> None:
            sink(batch[0])

        return self.deliver_batches(send, now_ms, batch_size=1, limit=limit)

    def deliver_batches(self, send: Callable[[list[Entry]], None], now_ms: int, *, batch_size: int = 16,
                        limit: int = 1000) -> int:
        """Hand due entries to ``send`` in batches of at most ``batch_size``, in order. ``send``
        returns when it took the whole batch, raises :class:`BatchFailed` when it took only the
        first ones, or any other exception when it took none. Returns how many were taken."""
        taken_total, resumed = 0, False
        while taken_total < limit:
            first = self._db.execute("SELECT next_attempt_ms, refused_code FROM entries WHERE delivered_ms IS NULL"
                                     " ORDER BY seq LIMIT 1").fetchone()
            if first is None or first[1] is not None or first[0] > now_ms:
                break  # nothing left, parked, or backing off
            batch = self._entries("WHERE delivered_ms IS NULL", (), min(batch_size, limit - taken_total))
            try:
                send(batch)
                taken, cause = len(batch), None
            except BatchFailed as failed:
                taken, cause = max(0, min(failed.taken, len(batch) - 1)), failed.cause
            except Exception as exc:  # noqa: BLE001 - any sink failure means "not delivered yet"
                taken, cause = 0, exc
            self._mark_delivered([entry.seq for entry in batch[:taken]], now_ms)
            taken_total += taken
            if cause is None:
                continue
            failed_entry = batch[taken]
            if isinstance(cause, ResumeFrom) and not resumed and cause.seq < failed_entry.seq:
                resumed = True  # once per call: a receiver that keeps asking is backed off below
                self._db.execute("UPDATE entries SET delivered_ms = NULL WHERE seq >= ?", (max(1, cause.seq),))
                continue
            if isinstance(cause, EntryRefused):
                self._db.execute("UPDATE entries SET attempts = attempts + 1, refused_code = ?, refused_ms = ?"
                                 " WHERE seq = ?", (cause.code, now_ms, failed_entry.seq))
            else:
                attempts = failed_entry.attempts + 1
                self._db.execute("UPDATE entries SET attempts = ?, next_attempt_ms = ? WHERE seq = ?",
                                 (attempts, now_ms + backoff_ms(attempts), failed_entry.seq))
            break
        return taken_total

    def _mark_delivered(self, seqs: list[int], now_ms: int) -> None:
        if not seqs:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one fsync for the batch
        try:
            db.executemany("UPDATE entries SET delivered_ms = ?, refused_code = NULL WHERE seq = ?",
                           [(now_ms, seq) for seq in seqs])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def unpark(self) -> int:
        """Let a parked outbox try again now; returns how many refused entries were released."""
        return self._db.execute("UPDATE entries SET refused_code = NULL, next_attempt_ms = 0"
                                " WHERE delivered_ms IS NULL AND refused_code IS NOT NULL").rowcount

    def verify_chain(self) -> int:
        """Recompute every hash; return the number of entries. Raises OutboxCorrupt on a break."""
        prev = GENESIS
        count = 0
        for seq, kind, body, prev_hash, digest, created_ms in self._db.execute(
                "SELECT seq, kind, body, prev_hash, entry_hash, created_ms FROM entries ORDER BY seq"):
            count += 1
            if seq != count or prev_hash != prev.hex():
                raise OutboxCorrupt(f"chain broken before entry {seq}")
            body_jcs = canonical_json(json.loads(body), allow_floats=False)
            if entry_hash(prev, seq, kind, body_jcs, created_ms).hex() != digest:
                raise OutboxCorrupt(f"entry {seq} was altered")
            prev = bytes.fromhex(digest)
        return count
