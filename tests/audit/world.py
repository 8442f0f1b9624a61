"""A small realistic log for the audit-tree tests: the keyring, a funded card channel with
debits (amounts in the log), index entries, and (on PostgreSQL) a hole in the positions."""

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

    def catch_up(self) -> int:
        return self.runner.catch_up()


def new_channel(deposit_minor: int = 1_000, buyer_account_id: str = "buyer-1") -> Channel:
    return Channel(id=uuid.uuid4(), meta=META, buyer_account_id=buyer_account_id, currency="USD", rail="card",
                   deposit_minor=deposit_minor, funding_ref="pi_1", expiry_s=T0 + 10 * KEY_RETENTION_S, fee_bps=500,
                   unsigned_allowance_minor=0, buyer_wallet="", chain_channel_id="", opened_at_s=T0)


def debit(channel: Channel, key: str, amount_minor: int = 10, at_s: int = T0) -> dict:
    return channel.debit(META, key=key, request_hash=f"h-{key}", amount_minor=amount_minor,
                         seller_account_id="seller-1", purpose="", now_s=at_s)


def build(runtime: Any, *, policy: HeadPolicy | None = None, indexes: int = 6, hole: bool = False) -> World:
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
    trail = AuditTrail(market, TreeStore(runtime.views), policy or HeadPolicy(every_events=1000, every_s=3600))
    runner = make_runner(runtime, AuditTree())
    runner.setup()
    world = World(runtime=runtime, trail=trail, runner=runner, channel_id=channel.id)
    world.catch_up()
    trail.sign_head(force=True)
    world.positions = [n.id for n in market.recorder.select_notifications(start=0, limit=10_000,
                                                                         inclusive_of_start=False)]
    gaps = [p + 1 for p, q in zip(world.positions, world.positions[1:], strict=False) if q > p + 1]
    world.hole = gaps[0] if gaps else None
    return world
