"""Holds on a channel: reserved, not spent; a capture is an ordinary debit (fee as a sale's);
the rest goes back; everything idempotent, replayable and within the invariants."""

from __future__ import annotations

import uuid

import pytest

from domain.model import ledger
from domain.model.base import Meta
from domain.model.channel import Channel
from domain.model.errors import (
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    UnsignedAllowanceExhausted,
)
from domain.model.ledger import ChannelRef
from ops.ledger_audit import LedgerAudit

META = Meta.system("test").as_dict()
T0 = 1_800_000_000
EXPIRY = T0 + 30 * 86400


def new_channel(deposit: int = 10_000, *, rail: str = "card", allowance: int = 0) -> Channel:
    return Channel(id=uuid.uuid4(), meta=META, buyer_account_id="b", currency="USD", rail=rail,
                   deposit_minor=deposit, funding_ref="f1", expiry_s=EXPIRY, fee_bps=500,
                   unsigned_allowance_minor=allowance, buyer_wallet="0x" + "ab" * 20 if rail == "chain" else "",
                   chain_channel_id="0x" + "01" * 32 if rail == "chain" else "", opened_at_s=T0)


def hold(channel: Channel, inv: str, amount: int) -> bool:
    return channel.hold(META, invocation_id=inv, amount_minor=amount, now_s=T0, lapse_at_s=T0 + 86400,
                        seller_account_id="s")


def capture(channel: Channel, inv: str, amount: int) -> dict | None:
    return channel.capture_hold(META, invocation_id=inv, amount_minor=amount, seller_account_id="s", now_s=T0 + 60)


def test_a_hold_reserves_and_a_capture_debits_with_the_sale_fee_and_releases_the_rest() -> None:
    channel = new_channel()
    assert hold(channel, "i1", 4_000) is True and hold(channel, "i1", 4_000) is False  # a retry: nothing
    assert (channel.held_minor, channel.spent_minor, channel.available_minor) == (4_000, 0, 6_000)
    paid = capture(channel, "i1", 1_000)
    assert paid is not None and paid["fee_minor"] == 50 and paid["purpose"] == "invoke"
    assert (channel.held_minor, channel.spent_minor, channel.available_minor) == (0, 1_000, 9_000)
    assert channel.sellers["s"] == {"net_minor": 950, "fee_minor": 50}
    assert capture(channel, "i1", 1_000)["replayed"] is True  # a second capture changes nothing
    assert channel.spent_minor == 1_000
    channel.check_invariants()


def test_debits_and_holds_cannot_spend_what_is_held() -> None:
    channel = new_channel(1_000)
    hold(channel, "i1", 800)
    with pytest.raises(InsufficientFunds) as exc:
        channel.debit(META, key="k", request_hash="h", amount_minor=300, seller_account_id="s", purpose="", now_s=T0)
    assert exc.value.extra["available_minor"] == 200
    with pytest.raises(InsufficientFunds):
        hold(channel, "i2", 201)
    channel.debit(META, key="k", request_hash="h", amount_minor=200, seller_account_id="s", purpose="", now_s=T0)
    assert channel.available_minor == 0
    channel.check_invariants()


def test_release_gives_everything_back_once_and_settle_waits_for_holds() -> None:
    channel = new_channel()
    hold(channel, "i1", 500)
    channel.request_close(META, now_s=T0)
    assert channel.settle(META, settlement_ref="internal") is False  # waits for the hold
    assert channel.status == "closing" and channel.refunded_minor == 0
    assert channel.release_hold(META, invocation_id="i1", now_s=T0) is True
    assert channel.release_hold(META, invocation_id="i1", now_s=T0) is False
    assert capture(channel, "i1", 100) is None  # released: a late capture takes nothing
    assert channel.settle_after_holds(META) is True and channel.refunded_minor == 10_000
    channel.check_invariants()


def test_capture_bounds_and_zero_capture() -> None:
    channel = new_channel()
    hold(channel, "i1", 500)
    with pytest.raises(InvalidInput):
        capture(channel, "i1", 501)
    assert capture(channel, "i1", 0) is None and channel.held_minor == 0 and channel.spent_minor == 0


def test_a_capture_is_allowed_on_a_closing_channel_but_no_new_hold() -> None:
    channel = new_channel()
    hold(channel, "i1", 500)
    channel.request_close(META, now_s=T0)
    with pytest.raises(InvalidState):
        hold(channel, "i2", 10)
    assert capture(channel, "i1", 300)["amount_minor"] == 300
    assert channel.settle_after_holds(META) is True
    assert (channel.settled_minor, channel.refunded_minor) == (300, 9_700)


def test_a_chain_channel_with_a_voucher_is_left_to_the_settlement_sweep() -> None:
    channel = new_channel(rail="chain", allowance=1_000)
    hold(channel, "i1", 100)
    channel.request_close(META, now_s=T0)
    channel.voucher_minor = 1  # as if a voucher had been recorded
    capture(channel, "i1", 50)
    assert channel.settle_after_holds(META) is False and channel.status == "closing"


def test_a_hold_must_lapse_before_the_channel_expires() -> None:
    channel = new_channel()
    with pytest.raises(InvalidState):
        channel.hold(META, invocation_id="i", amount_minor=1, now_s=T0, lapse_at_s=EXPIRY + 1)


def test_chain_holds_fit_the_unsigned_allowance_headroom() -> None:
    channel = new_channel(rail="chain", allowance=1_000)
    hold(channel, "i1", 600)
    with pytest.raises(UnsignedAllowanceExhausted) as exc:
        hold(channel, "i2", 401)
    assert exc.value.extra["available_minor"] == 400 and exc.value.code == "channel_unsigned_allowance_exhausted"
    capture(channel, "i1", 600)  # charged without a voucher, within the allowance
    assert channel.spent_minor - channel.voucher_minor == 600
    channel.check_invariants()


def test_holds_replay_from_events_and_post_nothing_to_the_ledger() -> None:
    channel = new_channel()
    hold(channel, "i1", 700)
    hold(channel, "i2", 300)
    capture(channel, "i1", 200)
    events = channel.collect_events()
    rebuilt = None
    for event in events:
        rebuilt = event.mutate(rebuilt)
    assert rebuilt is not None and rebuilt.holds == channel.holds and rebuilt.held_minor == 300
    ref = ChannelRef(str(channel.id), "b", "USD", "card")
    kinds = {type(e).__name__: ledger.channel_postings(ref, e) for e in events}
    assert kinds["HoldPlaced"] == [] and kinds["HoldReleased"] == []
    audit = LedgerAudit(None)
    for position, event in enumerate(events, 1):
        audit.feed(position, event)
    report = audit.report(None, None)
    assert audit.problems == [] and report["holds_open_minor"] == {"USD": 300}


def test_the_audit_catches_a_capture_above_its_release() -> None:
    channel = new_channel()
    hold(channel, "i1", 700)
    capture(channel, "i1", 200)
    events = channel.collect_events()
    debited = events[-1]
    debited.__dict__.update(amount_minor=250)  # a forged log entry
    audit = LedgerAudit(None)
    for position, event in enumerate(events, 1):
        audit.feed(position, event)
    assert any("capture invoke:i1 charges 250" in p for p in audit.problems)


def test_snapshots_from_version_2_upcast_without_holds() -> None:
    state: dict = {}
    Channel.upcast_v2_v3(state)
    assert state == {"holds": {}, "held_minor": 0}
