"""The outbox: durable, hash-chained, in order, at least once, backing off."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.outbox import GENESIS, Outbox, OutboxCorrupt, backoff_ms, entry_hash


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
