"""Write coalescing (``projections.coalesce``) on both stores: the same rows, in the same order,
reads see earlier writes, and a row count looked at is the statement's own."""

from __future__ import annotations

import pytest

from projections.coalesce import CoalescingTx


@pytest.fixture
def views(runtime):
    with runtime.views.transaction() as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS co (k TEXT PRIMARY KEY, n BIGINT NOT NULL)")
    return runtime.views


def test_runs_of_inserts_keep_their_order_and_reads_see_them(views) -> None:
    with views.transaction() as opened:
        tx = CoalescingTx(opened)
        for i in range(5):
            tx.execute("INSERT INTO co VALUES (?, ?)", (f"k{i}", i))
        tx.executemany("INSERT INTO co VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET n = co.n + excluded.n",
                       [("k0", 10), ("k0", 100)])
        assert tx.fetchone("SELECT n FROM co WHERE k = 'k0'") == {"n": 110}  # upserts applied in order
        tx.execute("INSERT INTO co VALUES ('k9', 9)")
        assert tx.execute("UPDATE co SET n = n + 1 WHERE k IN ('k1', 'k9')") == 2  # the held INSERT went first
    assert views.fetchone("SELECT COUNT(*) AS c FROM co")["c"] == 6


def test_a_count_looked_at_is_the_statement_s_own(views) -> None:
    with views.transaction() as opened:
        tx = CoalescingTx(opened)
        tx.execute("INSERT INTO co VALUES ('a', 1)")
        first = tx.execute("INSERT INTO co VALUES ('b', 1) ON CONFLICT (k) DO NOTHING")
        assert first == 1 and bool(first)
        again = tx.execute("INSERT INTO co VALUES ('b', 2) ON CONFLICT (k) DO NOTHING")
        assert not again and again != 1 and int(again) == 0
        alone = tx.execute("INSERT INTO co VALUES ('c', 1) ON CONFLICT (k) DO NOTHING")
        tx.execute("UPDATE co SET n = n WHERE k = 'c'")  # sent alone, before this: its count is known
        assert alone == 1
    assert views.fetchone("SELECT n FROM co WHERE k = 'b'") == {"n": 1}


def test_a_rollback_drops_what_was_held_back(views) -> None:
    with pytest.raises(RuntimeError), views.transaction() as opened:
        tx = CoalescingTx(opened)
        tx.execute("INSERT INTO co VALUES ('x', 1)")
        tx.flush()
        tx.execute("INSERT INTO co VALUES ('y', 1)")
        raise RuntimeError("handler failed")
    assert views.fetchone("SELECT COUNT(*) AS c FROM co")["c"] == 0


def test_a_long_run_of_plain_inserts_keeps_every_value(views) -> None:
    """A run long enough to go by COPY on PostgreSQL stores what the INSERTs one by one store."""
    from projections.coalesce import COPY_ROWS

    with views.transaction() as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS cp (k BIGINT PRIMARY KEY, s TEXT, b BYTEA, f BOOLEAN, n BIGINT)"
                   if tx.dialect == "postgres" else
                   "CREATE TABLE IF NOT EXISTS cp (k BIGINT PRIMARY KEY, s TEXT, b BLOB, f BOOLEAN, n BIGINT)")
    rows = [(i, f"s\t{i}\\n\"é", bytes([i % 256, 0, 92]), i % 2 == 0, None if i % 3 else i) for i in range(COPY_ROWS + 5)]
    with views.transaction() as opened:
        tx = CoalescingTx(opened)
        for row in rows[:-2]:
            tx.execute("INSERT INTO cp VALUES (?, ?, ?, ?, ?)", row)
        tx.execute("INSERT INTO cp (k, s, b, f, n) VALUES (?, ?, ?, ?, ?)", rows[-2])
        tx.execute("INSERT INTO cp (k, s, b, f, n) VALUES (?, ?, ?, ?, ?)", rows[-1])
        assert tx.fetchone("SELECT COUNT(*) AS c FROM cp")["c"] == len(rows)
    stored = [(r["k"], r["s"], bytes(r["b"]), bool(r["f"]), r["n"]) for r in views.fetchall("SELECT * FROM cp ORDER BY k")]
    assert stored == rows
