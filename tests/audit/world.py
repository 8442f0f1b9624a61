"""A small realistic log for the audit-tree tests: the keyring, a funded card channel with
debits (amounts in the log), index entries, and (on PostgreSQL) a hole in the positions;
``rich`` appends an enrolled device, two signed listings (each published and updated) and a
second channel with debits, for the tamper classes that need them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import IntegrityError

from domain.app.audit_trail import AuditTrail, HeadPolicy
from domain.model.channel import KEY_RETENTION_S, Channel
from domain.model.index import Index
from ops.bootstrap import make_runner
from projections.audit_tree import AuditTree, TreeStore

T0 = 1_800_000_000
META = {"actor": "account:buyer-1", "correlation_id": "req-1", "causation_id": ""}
OTHER = {"actor": "account:someone-else", "correlation_id": "req-2", "causation_id": ""}


@dataclass
class World:
    runtime: Any
    trail: AuditTrail
    runner: Any
    channel_id: uuid.UUID
    positions: list[int] = field(default_factory=list)
    hole: int | None = None
    topics: dict[int, str] = field(default_factory=dict)  # position -> topic (short)
    second_channel_id: uuid.UUID | None = None

    def of(self, topic: str, nth: int = 0, stream: uuid.UUID | None = None) -> int:
        """The position of the ``nth`` event of ``topic`` (short, e.g. ``Channel.Debited``)."""
        found = [p for p, t in sorted(self.topics.items()) if t == topic and (
            stream is None or self.streams[p] == stream)]
        return found[nth]

    streams: dict[int, uuid.UUID] = field(default_factory=dict)

    def catch_up(self) -> int:
        return self.runner.catch_up()


def new_channel(deposit_minor: int = 1_000, buyer_account_id: str = "buyer-1") -> Channel:
    return Channel(id=uuid.uuid4(), meta=META, buyer_account_id=buyer_account_id, currency="USD", rail="card",
                   deposit_minor=deposit_minor, funding_ref="pi_1", expiry_s=T0 + 10 * KEY_RETENTION_S, fee_bps=500,
                   unsigned_allowance_minor=0, buyer_wallet="", chain_channel_id="", opened_at_s=T0)


def debit(channel: Channel, key: str, amount_minor: int = 10, at_s: int = T0) -> dict:
    return channel.debit(META, key=key, request_hash=f"h-{key}", amount_minor=amount_minor,
                         seller_account_id="seller-1", purpose="", now_s=at_s)


def _rich(market: Any) -> uuid.UUID:
    """A device, two listings it signed, a second channel with two debits; its id."""
    from domain.model.device import Device
    from domain.model.keys import KxPrivateKey, SigningKey
    from tests.audit.signed_world import listing_events
    from tests.catalogue.helpers import listing

    key = SigningKey.generate()
    device = Device(id=uuid.uuid4(), meta=META, account_id="seller-1", name="node-1",
                    public_key=key.verify_key.to_multibase(), kid=key.verify_key.key_id,
                    kx_public_key=KxPrivateKey.generate().public_key.to_multibase(), endpoint="http://127.0.0.1:9090")
    market.save(device)
    for n, title in enumerate(("Patient admissions 2025", "Hospital beds 2024")):
        listing_events(market, str(device.id), "seller-1", key, listing(title), listing_key=f"lk-{n}")
    second = new_channel(buyer_account_id="buyer-2")
    market.save(second)
    for i in range(2):
        debit(second, f"c2-{i}", amount_minor=20 + i)
    market.save(second)
    return second.id


def build(runtime: Any, *, policy: HeadPolicy | None = None, indexes: int = 6, hole: bool = False,
          rich: bool = False) -> World:
    """The log, the tree over it (caught up) and one signed head over everything."""
    market = runtime.market
    market.keyring()  # the keyring's first event: the signing key's start
    channel = new_channel()
    market.save(channel)
    for round_ in range(3):
        for i in range(4):
            debit(channel, f"k{round_}-{i}", amount_minor=10 + i, at_s=T0 + round_)
        market.save(channel)
    for i in range(indexes):
        market.save(Index(id=uuid.uuid4(), meta=OTHER if i % 2 else META, kind="test", target_id=f"x{i}"))
        if hole and i == 2:
            twin = uuid.uuid4()
            market.save(Index(id=twin, meta=META, kind="test", target_id="twin"))
            try:  # the same aggregate created twice: the loser's position is never used (a hole)
                market.save(Index(id=twin, meta=META, kind="test", target_id="twin"))
            except IntegrityError:
                pass
    second = _rich(market) if rich else None
    trail = AuditTrail(market, TreeStore(runtime.views), policy or HeadPolicy(every_events=1000, every_s=3600))
    runner = make_runner(runtime, AuditTree())
    runner.setup()
    world = World(runtime=runtime, trail=trail, runner=runner, channel_id=channel.id, second_channel_id=second)
    world.catch_up()
    trail.sign_head(force=True)
    records = market.recorder.select_notifications(start=0, limit=10_000, inclusive_of_start=False)
    world.positions = [n.id for n in records]
    world.topics = {n.id: n.topic.rsplit(":", 1)[-1] for n in records}
    world.streams = {n.id: n.originator_id for n in records}
    gaps = [p + 1 for p, q in zip(world.positions, world.positions[1:], strict=False) if q > p + 1]
    world.hole = gaps[0] if gaps else None
    return world
