"""The session store: group commit, and the compute outbox written exactly once across a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

from node.compute.store import SessionRow, SessionStore, op_bind, op_countersigned, op_outbox, op_receipt
from node.outbox import Outbox


def _row(jti: str = "jti-0000000000000001") -> SessionRow:
    return SessionRow(jti, "invocation-1", "listing", "jkt", "a.b.c", 1000, 99_000)


def _counters(seq: int) -> dict[str, int]:
    return {"seq": seq, "cumulative_units": seq, "cumulative_minor": 7 * seq, "bytes_in": seq, "bytes_out": seq,
            "calls": seq}


def test_many_commits_from_one_loop_turn_share_a_transaction(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "compute.sqlite", tmp_path / "outbox.sqlite")
    store.commit_now(op_bind(_row()))
    store.start()

    async def main() -> None:
        await asyncio.gather(*(store.commit(op_receipt(_row().jti, {"seq": seq}, _counters(seq)))
                               for seq in range(1, 101)))
        await store.commit(op_countersigned(_row().jti, 100, 700, {"vc": 1}),
                           op_outbox("invoke_final", {"jti": _row().jti}, 5))
    asyncio.run(main())
    commits = store.commits
    store.close()
    assert commits <= 3  # a hundred receipts, one or two fsyncs
    reopened = SessionStore(tmp_path / "compute.sqlite", tmp_path / "outbox.sqlite")
    row = reopened.load(_row().jti)
    assert (row.seq, row.cumulative_minor, row.countersigned_seq, row.last_receipt) == (100, 700, 100, {"seq": 100})
    assert [r["seq"] for r in reopened.receipts(_row().jti)] == list(range(1, 101))
    assert [e.kind for e in reopened.outbox.entries()] == ["invoke_final"]
    reopened.close()


def test_an_entry_appended_before_a_crash_is_not_appended_again(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "compute.sqlite", tmp_path / "outbox.sqlite")
    store.commit_now(op_bind(_row()))
    # the crash: the entry reached the outbox, the pending row was not deleted yet
    store._read.execute("INSERT INTO pending_outbox (kind, body, created_ms) VALUES ('invoke_final', '{\"jti\":1}', 5)")
    store._read.execute("INSERT INTO pending_outbox (kind, body, created_ms) VALUES ('invoke_bound', '{\"jti\":2}', 6)")
    store.outbox.append("invoke_final", {"jti": 1}, 5)
    assert store.recover() == 1
    assert store.recover() == 0
    store.close()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    assert [(e.kind, e.body) for e in outbox.entries()] == [("invoke_final", {"jti": 1}), ("invoke_bound", {"jti": 2})]
    assert outbox.verify_chain() == 2
    outbox.close()


def test_a_failed_transaction_fails_every_waiter_and_keeps_nothing(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "compute.sqlite", tmp_path / "outbox.sqlite")
    store.commit_now(op_bind(_row()))
    store.start()

    async def main() -> list[object]:
        first = store.commit(op_receipt(_row().jti, {"seq": 1}, _counters(1)))
        clash = store.commit(op_receipt(_row().jti, {"seq": 1}, _counters(1)))  # the same (jti, seq) twice
        return await asyncio.gather(first, clash, return_exceptions=True)
    results = asyncio.run(main())
    store.close()
    assert all(isinstance(r, Exception) for r in results)
    reopened = SessionStore(tmp_path / "compute.sqlite", tmp_path / "outbox.sqlite")
    assert reopened.receipts(_row().jti) == [] and reopened.load(_row().jti).seq == 0
    reopened.close()
