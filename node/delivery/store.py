"""The node's delivery database (``<home>/delivery.sqlite``, WAL, ``synchronous=FULL``).

* ``objects``: the registry publishing fills: listing id → path, the folder it must stay in,
  size, object hash and the block hash list. Only registered objects are served.
* ``redemptions``: one row per token ``jti``, written in the same transaction as the first
  byte's reservation: the buyer key thumbprint it is bound to, times, counters.
* ``served``: one row per session, ``[start, end)`` of the object, moved forward *before* each
  block is sent (write-ahead), so a crash never under-counts what left the node.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.model.blocks import BlockCommitment, split_hashes
from domain.model.delivery import DeliveryClaims
from domain.model.errors import DeliveryResumeLimit, DeliveryTokenBound

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    listing_id TEXT PRIMARY KEY, path TEXT NOT NULL, root TEXT NOT NULL, size_bytes INTEGER NOT NULL,
    content_hash TEXT NOT NULL, block_size INTEGER NOT NULL, blocks_root TEXT NOT NULL, hashes BLOB NOT NULL,
    registered_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS redemptions (
    jti TEXT PRIMARY KEY, jkt TEXT NOT NULL, purchase_id TEXT NOT NULL, listing_id TEXT NOT NULL,
    exp_s INTEGER NOT NULL, bound_ms INTEGER NOT NULL, sessions INTEGER NOT NULL,
    first_byte_ms INTEGER NOT NULL, last_byte_ms INTEGER NOT NULL, blocks_acked INTEGER NOT NULL DEFAULT 0,
    receipt_seq INTEGER NOT NULL DEFAULT 0, outcome TEXT NOT NULL DEFAULT 'interrupted', token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS served (
    jti TEXT NOT NULL, session INTEGER NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    PRIMARY KEY (jti, session));
"""


@dataclass(frozen=True, slots=True)
class RegisteredObject:
    """A file this node serves for a listing."""

    listing_id: str
    path: str
    root: str
    size_bytes: int
    content_hash: str
    block_size: int
    hashes: list[bytes]

    @property
    def commitment(self) -> BlockCommitment:
        return BlockCommitment.build(self.size_bytes, self.block_size, self.hashes)


@dataclass(frozen=True, slots=True)
class Redemption:
    """A token bound on this node."""

    jti: str
    jkt: str
    sessions: int
    blocks_acked: int
    receipt_seq: int
    first_byte_ms: int
    last_byte_ms: int
    outcome: str


def max_coverage(intervals: list[tuple[int, int]], start: int, end: int) -> int:
    """How many times the most-served byte of ``[start, end)`` was already served."""
    events: list[tuple[int, int]] = []
    for s, e in intervals:
        s, e = max(s, start), min(e, end)
        if e > s:
            events += [(s, 1), (e, -1)]
    level = peak = 0
    for _, delta in sorted(events, key=lambda x: (x[0], x[1])):
        level += delta
        peak = max(peak, level)
    return peak


class DeliveryStore:
    """The registry and the redemption records. One connection; callers serialise their use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- registry -----------------------------------------------------------------------------
    def register(self, obj: RegisteredObject, now_ms: int) -> None:
        """Add or replace the object served for ``obj.listing_id``."""
        self._db.execute(
            "INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (listing_id) DO UPDATE SET path=excluded.path,"
            " root=excluded.root, size_bytes=excluded.size_bytes, content_hash=excluded.content_hash,"
            " block_size=excluded.block_size, blocks_root=excluded.blocks_root, hashes=excluded.hashes,"
            " registered_ms=excluded.registered_ms",
            (obj.listing_id, obj.path, obj.root, obj.size_bytes, obj.content_hash, obj.block_size,
             obj.commitment.to_json()["root"], b"".join(obj.hashes), now_ms))

    def lookup(self, listing_id: str) -> RegisteredObject | None:
        row = self._db.execute("SELECT listing_id, path, root, size_bytes, content_hash, block_size, hashes FROM objects"
                               " WHERE listing_id = ?", (listing_id,)).fetchone()
        if row is None:
            return None
        return RegisteredObject(*row[:6], hashes=split_hashes(row[6]))

    # -- redemptions --------------------------------------------------------------------------
    def redemption(self, jti: str) -> Redemption | None:
        row = self._db.execute("SELECT jti, jkt, sessions, blocks_acked, receipt_seq, first_byte_ms, last_byte_ms,"
                               " outcome FROM redemptions WHERE jti = ?", (jti,)).fetchone()
        return Redemption(*row) if row else None

    def intervals(self, jti: str) -> list[tuple[int, int]]:
        return [(s, e) for s, e in self._db.execute(
            'SELECT start, "end" FROM served WHERE jti = ? ORDER BY session', (jti,))]

    def begin_session(self, claims: DeliveryClaims, jkt: str, *, start: int, first_end: int, now_ms: int,
                      max_resumes: int) -> int:
        """Bind the token at its first byte (or check the resume), reserve the first block; return
        the session number. One transaction: concurrent redemptions bind exactly once.

        Raises:
            DeliveryTokenBound: the ``jti`` is bound to another buyer key.
            DeliveryResumeLimit: too many sessions, a byte would be served a third time, or the
                token's byte limit would be passed.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT jkt, sessions FROM redemptions WHERE jti = ?", (claims.jti,)).fetchone()
            if row is not None and row[0] != jkt:
                raise DeliveryTokenBound("this delivery token is bound to another buyer key")
            if row is not None and row[1] > max_resumes:
                raise DeliveryResumeLimit(f"this delivery was resumed {max_resumes} times already")
            served = self.intervals(claims.jti)
            if max_coverage(served, start, claims.size_bytes) >= 2:
                raise DeliveryResumeLimit("part of the object was already served twice for this token")
            if sum(e - s for s, e in served) + claims.size_bytes - start > claims.byte_limit:
                raise DeliveryResumeLimit("this resume would pass the token's byte limit")
            if row is None:
                db.execute("INSERT INTO redemptions (jti, jkt, purchase_id, listing_id, exp_s, bound_ms, sessions,"
                           " first_byte_ms, last_byte_ms, token) VALUES (?,?,?,?,?,?,1,?,?,?)",
                           (claims.jti, jkt, claims.sub, claims.listing_id, claims.exp, now_ms, now_ms, now_ms,
                            claims.token))
                session = 1
            else:
                session = row[1] + 1
                db.execute("UPDATE redemptions SET sessions = ? WHERE jti = ?", (session, claims.jti))
            db.execute('INSERT INTO served (jti, session, start, "end") VALUES (?,?,?,?)',
                       (claims.jti, session, start, first_end))
            db.execute("COMMIT")
            return session
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One durable commit (one fsync of the WAL) for several statements."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def reserve(self, jti: str, session: int, end: int, now_ms: int) -> None:
        """Move the session's served end to ``end`` before those bytes are sent (write-ahead)."""
        with self._transaction() as db:
            db.execute('UPDATE served SET "end" = MAX("end", ?) WHERE jti = ? AND session = ?', (end, jti, session))
            db.execute("UPDATE redemptions SET last_byte_ms = ? WHERE jti = ?", (now_ms, jti))

    def settle(self, jti: str, session: int, end: int, now_ms: int) -> None:
        """The session is over and ``end`` is exact: the bytes actually handed to the socket."""
        self._db.execute('UPDATE served SET "end" = ? WHERE jti = ? AND session = ?', (end, jti, session))
        self._db.execute("UPDATE redemptions SET last_byte_ms = MAX(last_byte_ms, ?) WHERE jti = ?", (now_ms, jti))

    def record_ack(self, jti: str, blocks: int) -> None:
        self._db.execute("UPDATE redemptions SET blocks_acked = MAX(blocks_acked, ?) WHERE jti = ?", (blocks, jti))

    def close_session(self, jti: str, session: int | None, end: int, now_ms: int, *, blocks_acked: int,
                      outcome: str) -> tuple[int, dict[str, Any]]:
        """:meth:`settle` (when a session was reserved), the buyer's acks and :meth:`next_receipt`
        in one transaction: the acks are kept in memory during a session and written here."""
        with self._transaction() as db:
            if session is not None:
                db.execute('UPDATE served SET "end" = ? WHERE jti = ? AND session = ?', (end, jti, session))
            db.execute("UPDATE redemptions SET last_byte_ms = MAX(last_byte_ms, ?), blocks_acked = MAX(blocks_acked,"
                       " ?), receipt_seq = receipt_seq + 1, outcome = ? WHERE jti = ?",
                       (now_ms if session is not None else 0, blocks_acked, outcome, jti))
            found = self.redemption(jti)
        assert found is not None, "a receipt is only made for a bound token"
        return found.receipt_seq, {"sessions": found.sessions, "blocks_acked": found.blocks_acked,
                                   "first_byte_ms": found.first_byte_ms, "last_byte_ms": found.last_byte_ms}

    def next_receipt(self, jti: str, outcome: str) -> tuple[int, dict[str, Any]]:
        """Count the next receipt for ``jti``; return its ``seq`` and the counters it reports."""
        self._db.execute("UPDATE redemptions SET receipt_seq = receipt_seq + 1, outcome = ? WHERE jti = ?",
                         (outcome, jti))
        found = self.redemption(jti)
        assert found is not None, "a receipt is only made for a bound token"
        return found.receipt_seq, {"sessions": found.sessions, "blocks_acked": found.blocks_acked,
                                   "first_byte_ms": found.first_byte_ms, "last_byte_ms": found.last_byte_ms}
