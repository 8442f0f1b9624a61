"""A node SIGKILLed mid-session and restarted: no billed receipt lost, none billed twice."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from domain.model.errors import MarketError
from domain.model.invoke import verify_invoke_token
from domain.model.invoke_receipts import verify_receipt
from node.compute.client import open_session
from tests.compute.world import ECHO, SLOW, Node, World
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


def _stored(world: World, jti: str) -> list[dict]:
    store = world.store()
    try:
        return store.receipts(jti)
    finally:
        store.close()


def _claims(world: World, token: str):
    return verify_invoke_token(token, world.hub_keys, audience=None, now_s=int(time.time()), require_start=False)


def test_a_call_running_when_the_node_dies_is_never_billed(tmp_path: Path) -> None:
    world = World(tmp_path)
    token = world.token(listing=SLOW, price=3)
    claims = _claims(world, token)
    node = Node(world)
    session = open_session(token, world.buyer_key, world.hub_keys, seller=node.address)
    for _ in range(10):
        session.invoke({"s": 0})
    pid_file = tmp_path / "running.pid"
    running = session.submit({"s": 30, "pid_file": str(pid_file)})
    wait_until(pid_file.exists, 20, what="the long call running")
    node.kill()
    with pytest.raises(MarketError):
        running.result(20)
    held = session.last_receipt
    session.disconnect()
    worker = int(pid_file.read_text())
    wait_until(lambda: not _alive(worker), 10, what="the dead node's worker gone too")
    node = Node(world)
    try:
        assert node.started["sessions_open"] == 1
        resumed = open_session(token, world.buyer_key, world.hub_keys, seller=node.address, previous=held)
        seqs = [resumed.invoke({"s": 0}).receipt["credentialSubject"]["seq"] for _ in range(5)]
        final = verify_receipt(resumed.close(), claims)
    finally:
        node.stop()
    assert seqs == [11, 12, 13, 14, 15]
    assert (final["seq"], final["cumulative_units"], final["cumulative_amount_minor"]) == (16, 15, 45)
    stored = _stored(world, claims.jti)
    assert [r["credentialSubject"]["seq"] for r in stored] == list(range(1, 17))
    assert [kind for kind, body in world.outbox() if body.get("jti") == claims.jti] == ["invoke_bound", "invoke_final"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_kill_during_a_burst_loses_no_receipt_and_bills_none_twice(tmp_path: Path) -> None:
    world = World(tmp_path)
    token = world.token(listing=ECHO, price=2, budget=10**6, concurrency=16)
    claims = _claims(world, token)
    node = Node(world)
    session = open_session(token, world.buyer_key, world.hub_keys, seller=node.address)
    calls = [session.submit({"i": i}) for i in range(1000)]
    wait_until(lambda: sum(c.future.done() for c in calls) >= 60, 60, what="a part of the burst answered")
    node.kill()
    got = {}
    for c in calls:
        try:
            result = c.result(30)
        except MarketError:
            continue
        got[result.receipt["credentialSubject"]["seq"]] = result.receipt
    held = session.last_receipt
    session.disconnect()
    stored = {r["credentialSubject"]["seq"]: r for r in _stored(world, claims.jti)}
    assert sorted(stored) == list(range(1, len(stored) + 1))  # dense: no seq used twice, none skipped
    assert all(stored[seq] == receipt for seq, receipt in got.items())  # what the buyer holds, the node kept
    assert len(got) <= len(stored) < 1000
    node = Node(world)
    try:
        resumed = open_session(token, world.buyer_key, world.hub_keys, seller=node.address, previous=held)
        assert resumed.last_receipt == stored[len(stored)]  # a receipt the buyer missed is handed over
        more = [resumed.invoke({"again": i}) for i in range(3)]
        final = verify_receipt(resumed.close(), claims)
    finally:
        node.stop()
    assert [m.receipt["credentialSubject"]["seq"] for m in more] == [len(stored) + i for i in (1, 2, 3)]
    billed = len(stored) + 3  # every stored receipt is a billed echo call
    assert (final["cumulative_units"], final["cumulative_amount_minor"]) == (billed, 2 * billed)
    assert final["seq"] == billed + 1
