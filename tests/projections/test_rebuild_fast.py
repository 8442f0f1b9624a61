"""The scratch rebuild's fast paths (``ops.audit_replay.SCRATCH_WRITES``) change only how rows
reach the database: on both stores a replay in tiny batches (so every buffer, cache and shared
read crosses many transactions), with the projections' buffers, multi-row INSERTs and one shared
read of the log, equals the live read models built one statement at a time; multi-row INSERTs
keep the order and the conflicts of rows sent one by one."""

from __future__ import annotations

from typing import Any

import pytest

from ops import audit_replay
from projections.coalesce import MULTI_ROWS, CoalescingTx
from tests.audit.test_replay import run_replay, workload


@pytest.mark.parametrize("batch_size", [3, 257])
def test_a_buffered_rebuild_in_small_batches_equals_the_live_read_models(runtime, monkeypatch, batch_size) -> None:
    workload(runtime)
    monkeypatch.setitem(audit_replay.SCRATCH_WRITES, "batch_size", batch_size)
    code, lines = run_replay(runtime)
    assert code == 0, "\n".join(lines)
    assert all(": equal (" in line for line in lines), lines


def test_separate_reads_and_threads_give_the_same_rows(runtime, monkeypatch) -> None:
    workload(runtime)
    seen: list[dict[str, Any]] = []
    real = audit_replay.rebuild_all

    def threaded(runners, stops, note, *, parallel, shared_read=True):  # type: ignore[no-untyped-def]
        seen.append({"parallel": parallel})
        return real(runners, stops, note, parallel=True, shared_read=True)

    monkeypatch.setattr(audit_replay, "rebuild_all", threaded)
    code, lines = run_replay(runtime)
    assert seen and code == 0, "\n".join(lines)
    monkeypatch.setattr(audit_replay, "rebuild_all", lambda r, s, n, *, parallel, shared_read=True:
                        real(r, s, n, parallel=False, shared_read=False))
    code, lines = run_replay(runtime)
    assert code == 0, "\n".join(lines)


@pytest.fixture
def views(runtime):
    with runtime.views.transaction() as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS mr (k TEXT PRIMARY KEY, n BIGINT NOT NULL, tag TEXT NOT NULL)")
    return runtime.views


def test_multi_row_inserts_keep_the_first_of_duplicates_and_every_row(views) -> None:
    count = 2 * MULTI_ROWS + 7  # two full statements and a remainder
    with views.transaction() as opened:
        tx = CoalescingTx(opened)
        for i in range(count):
            tx.execute("INSERT INTO mr VALUES (?, ?, 'lit') ON CONFLICT (k) DO NOTHING", (f"k{i % (count - 3)}", i))
        tx.flush()  # what the runner's tracking UPDATE does
    rows = {r["k"]: (r["n"], r["tag"]) for r in views.fetchall("SELECT k, n, tag FROM mr")}
    assert len(rows) == count - 3
    assert rows["k0"] == (0, "lit") and rows["k2"] == (2, "lit")  # the later duplicates did nothing
    assert rows[f"k{count - 4}"] == (count - 4, "lit")


def test_a_run_that_updates_on_conflict_is_still_applied_row_by_row(views) -> None:
    with views.transaction() as opened:
        tx = CoalescingTx(opened)
        for i in range(MULTI_ROWS + 5):
            tx.execute("INSERT INTO mr VALUES (?, ?, 't') ON CONFLICT (k) DO UPDATE SET n = mr.n + excluded.n",
                       ("same", 1))
        tx.flush()
    assert views.fetchone("SELECT n FROM mr WHERE k = 'same'") == {"n": MULTI_ROWS + 5}


def _purchase_events() -> list[Any]:
    import uuid

    from domain.model.purchase import Purchase

    meta = {"actor": "system", "correlation_id": "t", "causation_id": ""}
    purchase = Purchase(id=uuid.uuid4(), meta=meta, buyer_account_id="b", seller_account_id="s",
                        seller_device_id="d", listing_id="l", listing_version=1, channel_id="c", price_minor=100,
                        fee_minor=5, currency="USD", idempotency_key="k", request_hash="h", token="t",
                        kid="signing-1", jti="j", cnf_jkt="j", issued_at_s=1, start_by_s=900, expires_at_s=86400)
    purchase._token_redeemed(meta=meta, jti="j", device_id="d", buyer_jkt="j", redeemed_at_ms=1010)
    return purchase.collect_events()


def _purchase_rows(views: Any) -> list[dict[str, Any]]:
    return views.fetchall("SELECT * FROM purchases ORDER BY purchase_id")


def test_buffered_purchases_meeting_a_stored_row_apply_the_batch_one_by_one(runtime) -> None:
    """A Purchased whose row is stored already (a second pass over the same events) does
    nothing, as its INSERT's ON CONFLICT decides: the buffered batch is replayed unbuffered."""
    from projections.purchases import Purchases

    purchased, redeemed = _purchase_events()
    rows = {}
    for buffered in (False, True):
        projection = Purchases()
        projection.buffered = buffered
        with runtime.views.transaction() as tx:
            projection.drop_tables(tx)
            projection.create_tables(tx)
        with runtime.views.transaction() as tx:  # the first batch: the purchase stored, redeemed
            for position, event in enumerate((purchased, redeemed), start=1):
                projection.process(event, tx, position)
            projection.flush(tx)
        with runtime.views.transaction() as tx:  # again, at later positions: the stored row wins
            projection.process(purchased, tx, 7)
            projection.process(redeemed, tx, 8)
            projection.flush(tx)
        rows[buffered] = _purchase_rows(runtime.views)
    assert rows[True] == rows[False]
    assert [(r["position"], r["status"]) for r in rows[True]] == [(1, "redeemed")]
