"""The outbox: durable, hash-chained, in order, at least once, backing off."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.outbox import (
    GENESIS,
    BatchFailed,
    EntryRefused,
    Outbox,
    OutboxCorrupt,
    ResumeFrom,
    backoff_ms,
    entry_hash,
)


def test_entries_are_chained_and_survive_a_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    first = box.append("receipt", {"n": 1}, 1000)
    second = box.append("confirmation", {"n": 2}, 2000)
    assert first.prev_hash == GENESIS.hex() and second.prev_hash == first.entry_hash
    assert second.entry_hash == entry_hash(bytes.fromhex(first.entry_hash), 2, "confirmation", b'{"n":2}', 2000).hex()
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert again.verify_chain() == 2 and again.head() == (2, second.entry_hash)
    assert [e.body for e in again.pending()] == [{"n": 1}, {"n": 2}]


def test_an_edit_is_detected(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.append("receipt", {"bytes": 10}, 1)
    box.append("receipt", {"bytes": 20}, 2)
    db = sqlite3.connect(tmp_path / "o.sqlite")
    db.execute("UPDATE entries SET body = '{\"bytes\":11}' WHERE seq = 1")
    db.commit()
    with pytest.raises(OutboxCorrupt):
        box.verify_chain()


def test_delivery_is_in_order_at_least_once_with_backoff(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for n in range(3):
        box.append("receipt", {"n": n}, 0)
    seen: list[int] = []
    failing = {"left": 2}

    def sink(entry) -> None:
        if entry.seq == 2 and failing["left"]:
            failing["left"] -= 1
            raise ConnectionError("hub down")
        seen.append(entry.seq)

    assert box.deliver(sink, 1000) == 1  # entry 2 failed: 3 waits behind it
    assert box.deliver(sink, 1001) == 0  # backing off
    assert box.deliver(sink, 1000 + 1300) == 0  # second failure
    assert box.deliver(sink, 10_000) == 2
    assert seen == [1, 2, 3] and box.pending() == []
    assert 800 <= backoff_ms(1) <= 1200 and backoff_ms(40) <= 360_000


def test_batches_are_taken_in_order_and_a_partial_batch_keeps_the_rest(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for n in range(5):
        box.append("heartbeat", {"n": n}, 0)
    sent: list[list[int]] = []

    def send(batch) -> None:
        sent.append([e.seq for e in batch])
        if batch[0].seq == 1:
            raise BatchFailed(2, ConnectionError("the hub went away after two"))

    assert box.deliver_batches(send, 1000, batch_size=3) == 2  # 1, 2 taken; 3 backs off
    assert [e.seq for e in box.pending()] == [3, 4, 5]
    assert box.deliver_batches(send, 1001, batch_size=3) == 0
    assert box.deliver_batches(send, 10_000, batch_size=3) == 3
    assert sent == [[1, 2, 3], [3, 4, 5]] and box.pending() == []


def test_a_refused_entry_parks_the_outbox_until_it_is_released(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for n in range(3):
        box.append("receipt", {"n": n}, 0)
    calls: list[int] = []

    def sink(entry) -> None:
        calls.append(entry.seq)
        if entry.seq == 2 and len(calls) < 4:
            raise EntryRefused("key_expired", "the hub no longer accepts this key")

    assert box.deliver(sink, 1000) == 1
    status = box.status()
    assert status["parked"] == {"seq": 2, "kind": "receipt", "code": "key_expired", "at_ms": 1000, "attempts": 1}
    assert status["pending"] == 2 and status["entries"] == 3
    for later in (10_000, 10**9):  # parked: no retry in a loop, however long we wait
        assert box.deliver(sink, later) == 0
    assert calls == [1, 2]
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert again.status()["parked"]["seq"] == 2  # survives a restart
    assert again.unpark() == 1 and again.status()["parked"] is None
    assert again.deliver(sink, 20_000) == 0 and again.status()["parked"]["attempts"] == 2  # refused again
    again.unpark()
    assert again.deliver(sink, 30_000) == 2 and again.pending() == []


def test_a_receiver_that_lost_entries_gets_them_again(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for n in range(4):
        box.append("heartbeat", {"n": n}, 0)
    assert box.deliver(lambda e: None, 0) == 4
    box.append("heartbeat", {"n": 4}, 0)
    seen: list[int] = []

    def send(batch) -> None:
        seen.extend(e.seq for e in batch)
        if batch[0].seq == 5:
            raise ResumeFrom(3)  # e.g. the hub was restored from a backup taken after entry 2

    assert box.deliver_batches(send, 1000) == 3
    assert seen == [5, 3, 4, 5] and box.pending() == []


def test_an_outbox_made_before_parking_is_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.execute("CREATE TABLE entries (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL,"
               " prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL, created_ms INTEGER NOT NULL,"
               " attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL DEFAULT 0, delivered_ms INTEGER)")
    db.commit()
    db.close()
    box = Outbox(tmp_path / "old.sqlite")
    box.append("heartbeat", {"n": 1}, 5)
    assert box.status()["pending"] == 1 and box.verify_chain() == 1
