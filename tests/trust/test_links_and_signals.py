"""Links (wallets, payout accounts), key rotations and behaviour signals through the projection."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from freezegun import freeze_time

from domain.model.channel import Channel
from domain.model.payout import PayoutDestination
from domain.model.traces import Signal
from tests.trust.test_projection import META, T0, deliver, device_trust, enroll, sale


def chain_channel(runtime, buyer: str, wallet: str) -> None:
    runtime.market.save(Channel(id=uuid.uuid4(), meta=META, buyer_account_id=buyer, currency="USDC", rail="chain",
                                deposit_minor=10_000, funding_ref="", expiry_s=0, fee_bps=0,
                                unsigned_allowance_minor=0, buyer_wallet=wallet, chain_channel_id="0x1",
                                opened_at_s=0))


def test_buyers_linked_by_wallet_or_payout_account_weigh_zero(runtime) -> None:
    with freeze_time(T0):
        seller = enroll(runtime, "seller")
        chain_channel(runtime, "seller", "0xAbC")
        chain_channel(runtime, "sock", "0xabc")  # the same wallet, another spelling
        destination = PayoutDestination(id=uuid.uuid4(), meta=META, account_id="seller", stripe_account="acct_1")
        runtime.market.save(destination)
        runtime.market.save(PayoutDestination(id=uuid.uuid4(), meta=META, account_id="puppet", stripe_account="acct_2"))
        for buyer in ("sock", "puppet"):
            deliver(runtime, sale(runtime, seller, "seller", buyer))
        reasons = {p["buyer_account_id"]: p["reason"]
                   for p in device_trust(runtime, seller)["components"]["delivery"]["purchases"]}
        assert reasons == {"sock": "same_wallet", "puppet": ""}
        destination.change(META, "acct_2")  # the seller moves its payouts to the puppet's account
        runtime.market.save(destination)
        deliver(runtime, sale(runtime, seller, "seller", "puppet"))
        delivery = device_trust(runtime, seller)["components"]["delivery"]
        assert {p["reason"] for p in delivery["purchases"] if p["buyer_account_id"] == "puppet"} == {
            "same_payout_account"}
        assert delivery["score"] == 0.5


def test_rotations_retired_keys_and_signals(runtime) -> None:
    with freeze_time(T0) as clock:
        seller = enroll(runtime, "seller")
        device = runtime.market.devices.device(seller)
        clock.move_to(T0 + timedelta(hours=2))
        device.rotate_key(META, public_key="pk2", kid="k2", kx_public_key="kx2", signature="s",
                          at_s=int(datetime.now(UTC).timestamp()))
        runtime.market.save(device)
        for code, kind in (("key_expired", "redemption"), ("token_replayed", "redemption"),
                           ("token_replayed", "refusal"), ("receipt_invalid", "receipt")):
            runtime.market.save(Signal.make(uuid.uuid4(), META, device_id=seller, kind=kind, code=code, at_ms=0))
        result = device_trust(runtime, seller)
        keys, behaviour = result["components"]["keys"], result["components"]["behaviour"]
        assert (keys["rotations"], keys["retired_key_uses"], keys["positive"], keys["negative"]) == (1, 1, 1.0, 1.0)
        assert behaviour["negative"] == 3.0  # a replay 2, a refused receipt 1, the node's own report 0
        assert {s["reason"] for s in behaviour["signals"]} == {"replayed", "reported_by_node", "refused"}
        assert sum(":Signal.BehaviourSignal:" in s for s in result["sources"]) == 4
        assert result["score"] < 0.5
