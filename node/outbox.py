"""The node's durable outbox: what the hub must hear, kept until a sink took it.

SQLite (``<home>/outbox.sqlite``, WAL, ``synchronous=FULL``). Entries are appended in order
and hash-chained, so the hub (which de-duplicates by ``seq`` and checks the chain) can resume
from its last ``{seq, entry_hash}`` and notice a gap or an edit::

    entry_hash = SHA-256( lp("aimarket/outbox/v1") || lp(prev_hash) || u64be(seq) || lp(kind)
                          || lp(JCS(body)) || u64be(created_ms) )      prev_hash of seq 1 = 32 zero bytes

Delivery is at-least-once, in order: :meth:`Outbox.deliver` hands due entries to a callable
sink one by one; the first one that raises stays (with its later ones) and is retried after an
exponential back-off (1 s doubling to 5 min, with jitter). Kinds written by the delivery
server: ``redemption`` (a token bound), ``receipt``, ``confirmation``, ``refusal`` (a bound
token tried by another key or after its deadline).
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.model.jcs import canonical_json

LABEL = b"aimarket/outbox/v1"
GENESIS = bytes(32)
BACKOFF_BASE_MS = 1000
BACKOFF_MAX_MS = 300_000


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def entry_hash(prev_hash: bytes, seq: int, kind: str, body_jcs: bytes, created_ms: int) -> bytes:
    """The chained hash of one entry (see the module docstring)."""
    return hashlib.sha256(_lp(LABEL) + _lp(prev_hash) + struct.pack(">Q", seq) + _lp(kind.encode())
                          + _lp(body_jcs) + struct.pack(">Q", created_ms)).digest()


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

    def _entries(self, where: str, args: tuple[Any, ...]) -> list[Entry]:
        rows = self._db.execute(f"SELECT seq, kind, body, prev_hash, entry_hash, created_ms, attempts FROM entries"  # noqa: S608 - fixed clauses
                                f" {where} ORDER BY seq", args).fetchall()
        return [Entry(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def entries(self, *, kind: str | None = None) -> list[Entry]:
        """Every entry (optionally of one kind), in order."""
        return self._entries("WHERE kind = ?", (kind,)) if kind else self._entries("", ())

    def pending(self) -> list[Entry]:
        """Entries no sink has taken yet."""
        return self._entries("WHERE delivered_ms IS NULL", ())

    def head(self) -> tuple[int, str]:
        """``(seq, entry_hash)`` of the last entry (``(0, zeros)`` when empty)."""
        row = self._db.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS.hex())

    def deliver(self, sink: Callable[[Entry], None], now_ms: int, limit: int = 100) -> int:
        """Hand due entries to ``sink`` in order; stop at the first failure. Returns how many it took."""
        first = self._db.execute("SELECT next_attempt_ms FROM entries WHERE delivered_ms IS NULL ORDER BY seq LIMIT 1"
                                 ).fetchone()
        if first is None or first[0] > now_ms:
            return 0
        taken = 0
        for entry in self._entries("WHERE delivered_ms IS NULL", ())[:limit]:
            try:
                sink(entry)
            except Exception:  # noqa: BLE001 - any sink failure means "not delivered yet"
                attempts = entry.attempts + 1
                self._db.execute("UPDATE entries SET attempts = ?, next_attempt_ms = ? WHERE seq = ?",
                                 (attempts, now_ms + backoff_ms(attempts), entry.seq))
                break
            self._db.execute("UPDATE entries SET delivered_ms = ? WHERE seq = ?", (now_ms, entry.seq))
            taken += 1
        return taken

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
