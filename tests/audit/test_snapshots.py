"""Authenticated snapshots (issue 13, build 2): an edited ``deposit_minor`` in a stored snapshot
(the measured attack: a channel overspent by 900,000 units) is refused, the channel is rebuilt
from its events, its true balance holds, and the refusal is reported (log and audit verify).
On PostgreSQL and on the embedded store."""

from __future__ import annotations

import uuid

import pytest
from structlog.testing import capture_logs

from domain.app.eventsourcing_ext import SEAL_MAGIC
from domain.model.channel import Channel
from domain.model.errors import InsufficientFunds
from ops.audit import verify_log
from tests.audit.tamper import Tamper
from tests.audit.world import T0, debit, new_channel
from tests.money.conftest import money_client, money_runtime  # noqa: F401 - fixtures


def saved_channel(runtime, monkeypatch) -> Channel:
    """A 1,000-unit channel with 12 debits of 50, each saved: a snapshot at version 10."""
    monkeypatch.setitem(runtime.market.snapshotting_intervals, Channel, 10)
    channel = new_channel(deposit_minor=1_000)
    runtime.market.save(channel)
    for i in range(12):
        debit(channel, f"k{i}", amount_minor=50, at_s=T0 + i)
        runtime.market.save(channel)
    return channel


def test_snapshots_are_sealed_and_load(runtime, monkeypatch) -> None:
    channel = saved_channel(runtime, monkeypatch)
    version, state = Tamper(runtime).snapshot_state(channel.id)
    assert version == 10 and state.startswith(SEAL_MAGIC) and b'"deposit_minor":1000' in state
    loaded = runtime.market.load(Channel, channel.id)
    assert loaded.spent_minor == 600 and loaded.deposit_minor == 1_000
    assert list(runtime.market.snapshots.refused) == []
    assert verify_log(runtime.market, runtime.views)["tree"]["snapshots"] == {"checked": 1}


def test_an_edited_deposit_is_refused_and_the_true_balance_holds(runtime, monkeypatch) -> None:
    channel = saved_channel(runtime, monkeypatch)
    tamper = Tamper(runtime)
    version, state = tamper.snapshot_state(channel.id)
    tamper.set_snapshot_state(channel.id, version, state.replace(b'"deposit_minor":1000', b'"deposit_minor":901000'))
    with capture_logs() as logs:
        loaded = runtime.market.load(Channel, channel.id)
    assert loaded.deposit_minor == 1_000 and loaded.spent_minor == 600  # rebuilt from its events
    refused = [entry for entry in logs if entry["event"] == "snapshot.refused"]
    assert refused and refused[0]["aggregate_id"] == str(channel.id) and refused[0]["version"] == version
    with pytest.raises(InsufficientFunds):  # 400 left: 900,000 more would have been an overspend
        debit(loaded, "overspend", amount_minor=500, at_s=T0 + 100)
    report = verify_log(runtime.market, runtime.views)
    assert not report["ok"]
    assert any(f"snapshot of {channel.id} version {version}: refused" in p for p in report["problems"])


def test_a_snapshot_moved_to_another_version_or_unsealed_is_refused(runtime, monkeypatch) -> None:
    channel = saved_channel(runtime, monkeypatch)
    tamper = Tamper(runtime)
    version, state = tamper.snapshot_state(channel.id)
    inner = state[len(SEAL_MAGIC) + 8 + 32:]
    tamper.set_snapshot_state(channel.id, version, inner)  # the library's own bytes, no seal
    assert runtime.market.load(Channel, channel.id).spent_minor == 600
    assert list(runtime.market.snapshots.refused)[-1]["reason"] == "not sealed"
    position = int.from_bytes(state[len(SEAL_MAGIC):len(SEAL_MAGIC) + 8], "big")
    forged = SEAL_MAGIC + (position + 1).to_bytes(8, "big") + state[len(SEAL_MAGIC) + 8:]
    tamper.set_snapshot_state(channel.id, version, forged)  # bound to another position: the MAC fails
    assert runtime.market.load(Channel, channel.id).spent_minor == 600
    assert "seal does not verify" in list(runtime.market.snapshots.refused)[-1]["reason"]


def test_a_fresh_process_refuses_the_overspend_an_edited_snapshot_would_allow(runtime, client, make_settings,
                                                                              monkeypatch) -> None:
    """The measured attack, end to end: a cold process (no cache) loads the channel for a debit."""
    from ops.bootstrap import build_runtime
    from tests.helpers import register

    buyer, seller = register(client, roles=["buyer"]), register(client, roles=["seller"])
    monkeypatch.setitem(runtime.market.snapshotting_intervals, Channel, 10)
    channel = new_channel(deposit_minor=1_000, buyer_account_id=buyer["id"])  # a funded card channel
    runtime.market.save(channel)
    for i in range(12):
        debit(channel, f"k{i}", amount_minor=50, at_s=T0 + i)
        runtime.market.save(channel)
    tamper = Tamper(runtime)
    version, state = tamper.snapshot_state(channel.id)
    tamper.set_snapshot_state(channel.id, version, state.replace(b'"deposit_minor":1000', b'"deposit_minor":901000'))
    fresh = build_runtime(runtime.settings)
    try:
        body = {"amount_minor": 500, "seller_account_id": seller["id"]}
        with capture_logs() as logs, pytest.raises(InsufficientFunds):
            fresh.market.money.debit({"actor": f"account:{buyer['id']}", "correlation_id": "r", "causation_id": ""},
                                     buyer["id"], str(channel.id), idempotency_key="overspend-1", body=body)
        assert any(entry["event"] == "snapshot.refused" for entry in logs)
        fresh.market.money.debit({"actor": f"account:{buyer['id']}", "correlation_id": "r", "causation_id": ""},
                                 buyer["id"], str(channel.id), idempotency_key="within-1",
                                 body={**body, "amount_minor": 400})  # the true balance, to the unit
        assert fresh.market.load(Channel, channel.id).spent_minor == 1_000
    finally:
        fresh.close()


def test_snapshots_taken_by_group_commit_are_sealed_too(money_runtime, money_client, stripe_stub,  # noqa: F811
                                                        monkeypatch) -> None:
    """On PostgreSQL debits are saved by the asyncio saver (``after_external_record``): the
    snapshot's log position is looked up, and the seal is the same."""
    from tests.money.conftest import debit as api_debit
    from tests.money.conftest import open_card_channel, person

    assert money_runtime.settings.embedded or money_runtime.debit_batcher.saver is not None
    monkeypatch.setitem(money_runtime.market.snapshotting_intervals, Channel, 4)
    buyer, seller = person(money_client, ["buyer"]), person(money_client, ["seller"])
    channel_id = open_card_channel(money_client, stripe_stub, buyer, 1_000)[0]
    for _ in range(6):
        assert api_debit(money_client, buyer, channel_id, seller["id"], 10).status_code == 201
    _version, state = Tamper(money_runtime).snapshot_state(uuid.UUID(channel_id))
    assert state.startswith(SEAL_MAGIC)
    report = verify_log(money_runtime.market, money_runtime.views)
    assert report["tree"]["snapshots"]["checked"] >= 1
    assert not [p for p in report["problems"] if p.startswith("snapshot")], report["problems"]
    assert list(money_runtime.market.snapshots.refused) == []
