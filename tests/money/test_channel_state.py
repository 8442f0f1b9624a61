"""Channel state stays bounded and loads fast: idempotency keys expire after 24 h, and
snapshots are taken from the saved object (no reload on the debit path)."""

from __future__ import annotations

import uuid

from domain.model.base import Meta
from domain.model.channel import KEY_RETENTION_S, Channel
from ops.bootstrap import Runtime

META = Meta.system("test").as_dict()
T0 = 1_800_000_000


def new_channel(deposit: int = 10_000) -> Channel:
    return Channel(id=uuid.uuid4(), meta=META, buyer_account_id="b", currency="USD", rail="card",
                   deposit_minor=deposit, funding_ref="f1", expiry_s=T0 + 10 * KEY_RETENTION_S, fee_bps=500,
                   unsigned_allowance_minor=0, buyer_wallet="", chain_channel_id="", opened_at_s=T0)


def debit(channel: Channel, key: str, at_s: int, amount: int = 10) -> dict:
    return channel.debit(META, key=key, request_hash=f"h-{key}", amount_minor=amount, seller_account_id="s",
                         purpose="", now_s=at_s)


def test_keys_replay_within_24_hours_and_are_forgotten_after() -> None:
    channel = new_channel()
    first = debit(channel, "k1", T0)
    assert debit(channel, "k1", T0 + KEY_RETENTION_S - 1)["replayed"] is True  # a replay, not a debit
    debit(channel, "k2", T0 + KEY_RETENTION_S)  # pushes k1 out of the window
    assert "k1" not in channel.debits and "k2" in channel.debits
    assert channel.spent_minor == 20 and channel.debit_count == 2
    again = debit(channel, "k1", T0 + KEY_RETENTION_S + 1)
    assert again["replayed"] is False and again["sequence"] == 3 != first["sequence"]
    assert channel.to_public()["debits"] == 3


def test_pruning_is_replayed_identically_from_events() -> None:
    channel = new_channel()
    for i in range(50):
        debit(channel, f"k{i}", T0 + i * 3600)
    events = channel.collect_events()
    rebuilt = None
    for event in events:
        rebuilt = event.mutate(rebuilt)
    assert rebuilt is not None
    assert list(rebuilt.debits) == list(channel.debits) and len(channel.debits) == 24  # k26..k49: within 24 h of the last
    assert rebuilt.debit_count == 50 and rebuilt.spent_minor == channel.spent_minor


def test_snapshot_taken_from_saved_object_on_interval(runtime: Runtime, monkeypatch) -> None:
    market = runtime.market
    monkeypatch.setitem(market.snapshotting_intervals, Channel, 10)
    reloads = []
    original_get = market.repository.get
    monkeypatch.setattr(market.repository, "get", lambda *a, **k: reloads.append(a) or original_get(*a, **k))
    channel = new_channel()
    market.save(channel)
    for i in range(24):
        debit(channel, f"k{i}", T0 + i)
        if i % 5 == 4:
            market.save(channel)  # saves of five debits: crosses 10 and 20 once each
    market.save(channel)
    assert reloads == []  # no reload to take the snapshots
    snapshots = list(market.snapshots.get(channel.id))
    assert [s.originator_version for s in snapshots] == [11, 21]
    monkeypatch.undo()
    loaded = market.repository.get(channel.id)
    assert loaded.version == channel.version and loaded.debits == channel.debits
    assert loaded.spent_minor == channel.spent_minor == 240
