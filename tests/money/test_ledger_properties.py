"""Property test: random sequences of opens, top-ups, debits, closes, expiries, settlements,
refunds and card refunds sent or refused; after every step the ledger balances to zero per
currency, no channel or payable is below zero, settled <= voucher <= deposit holds on every
channel, card refunds never exceed the refund nor any intent what it paid, and each channel's
fee is exactly ``floor(total * fee_bps / 10000)`` of what it spent (or settled), with the
sellers' shares + the fee == the spend."""

from __future__ import annotations

import uuid
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from domain.model import ledger
from domain.model.channel import Channel
from domain.model.channel_rules import debit_fee, fee_for
from domain.model.errors import IdempotencyKeyReused, InsufficientFunds, InvalidInput, InvalidState
from domain.model.ledger import ChannelRef, LedgerInvariantViolated

META = {"actor": "test", "correlation_id": "c", "causation_id": "c"}
SELLERS = [str(uuid.UUID(int=i + 1)) for i in range(3)]
NOW = 1_000_000


class ChannelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.channels: list[Channel] = []
        self.refs: dict[str, ChannelRef] = {}
        self.balances: dict[tuple[str, str], int] = defaultdict(int)
        self.acknowledged: dict[str, int] = defaultdict(int)  # channel -> sum of debits answered
        self.fees: dict[str, int] = defaultdict(int)  # channel -> its postings to platform:fees
        self.sellers: dict[str, int] = defaultdict(int)  # channel -> its postings to seller payables
        self.keys: dict[str, tuple[str, int, str]] = {}
        self.now = NOW
        self.serial = 0

    def _apply(self, channel: Channel) -> None:
        ref = self.refs[str(channel.id)]
        for event in channel.collect_events():
            postings = ledger.channel_postings(ref, event)
            ledger.check_balanced(postings)
            for p in postings:
                self.balances[(p.account, p.currency)] += p.amount_minor
                if p.account == ledger.PLATFORM_FEES:
                    self.fees[str(channel.id)] += p.amount_minor
                elif p.account.startswith("seller:") and type(event).__name__ == "Debited":
                    self.sellers[str(channel.id)] += p.amount_minor

    def _open(self, rail: str, deposit: int, fee_bps: int, allowance: int) -> None:
        self.serial += 1
        channel = Channel(id=uuid.uuid4(), meta=META, buyer_account_id=f"b{self.serial % 2}",
                          currency="TUSD" if rail == "chain" else "USD", rail=rail, deposit_minor=deposit,
                          funding_ref=self._ref(rail, f"f{self.serial}"), expiry_s=self.now + 1000, fee_bps=fee_bps,
                          unsigned_allowance_minor=allowance, buyer_wallet="0x" + "1" * 40,
                          chain_channel_id="0x" + "2" * 64, opened_at_s=self.now)
        self.refs[str(channel.id)] = ChannelRef(str(channel.id), channel.buyer_account_id, channel.currency, rail)
        self.channels.append(channel)
        self._apply(channel)

    @staticmethod
    def _ref(rail: str, name: str) -> str:
        return f"stripe:pi_{name}" if rail == "card" else name  # card funding is a PaymentIntent

    @initialize()
    def first(self) -> None:
        self._open("card", 1000, 500, 0)

    @rule(rail=st.sampled_from(["card", "chain"]), deposit=st.integers(0, 5000),
          fee_bps=st.sampled_from([0, 500, 999]) | st.integers(0, 10_000),
          allowance=st.sampled_from([0, 0, 50]))
    def open(self, rail: str, deposit: int, fee_bps: int, allowance: int) -> None:
        self._open(rail, deposit, fee_bps, allowance)

    @rule(i=st.integers(0, 50), amount=st.integers(1, 3000), ref=st.integers(0, 3))
    def top_up(self, i: int, amount: int, ref: int) -> None:
        channel = self.channels[i % len(self.channels)]
        funding_ref = self._ref(channel.rail, f"topup-{ref}")
        if channel.rail == "card" and channel.status == "settled":  # paid after the close: given back
            planned = {p["payment_intent_id"]: p["amount_minor"] for p in channel.card_refund_plan()}
            if channel.return_late_payment(META, amount_minor=amount, funding_ref=funding_ref):
                after = {p["payment_intent_id"]: p["amount_minor"] for p in channel.card_refund_plan()}
                assert after == {**planned, funding_ref.removeprefix("stripe:"): amount}  # older parts unchanged
            self._apply(channel)
            return
        try:
            channel.top_up(META, amount_minor=amount, funding_ref=funding_ref)
        except InvalidState:
            assert channel.status in ("closing", "settled")
        self._apply(channel)

    @rule(i=st.integers(0, 50), amount=st.integers(1, 700), seller=st.sampled_from(SELLERS),
          key=st.integers(0, 30), sign=st.sampled_from(["exact", "none", "short"]))
    def debit(self, i: int, amount: int, seller: str, key: int, sign: str) -> None:
        channel = self.channels[i % len(self.channels)]
        k = f"k{key}"
        body_hash = f"{amount}:{seller}"
        voucher = None
        if channel.rail == "chain" and sign != "none":
            cumulative = channel.spent_minor + amount - (channel.unsigned_allowance_minor if sign == "short" else 0)
            voucher = {"cumulative_minor": max(cumulative, channel.voucher_minor), "signature": "0xsig"}
        before = channel.spent_minor
        try:
            result = channel.debit(META, key=k, request_hash=body_hash, amount_minor=amount, seller_account_id=seller,
                                   purpose="p", now_s=self.now, voucher=voucher)
        except IdempotencyKeyReused:
            assert k in channel.debits and channel.debits[k]["request_hash"] != body_hash
            return
        except InsufficientFunds:
            assert before + amount > channel.deposit_minor
            return
        except (InvalidState, InvalidInput):
            assert channel.spent_minor == before
            return
        if result["replayed"]:
            assert channel.spent_minor == before  # a retry never charges twice
        else:
            assert channel.spent_minor == before + amount
            assert result["fee_minor"] == debit_fee(before, amount, channel.fee_bps)
            self.acknowledged[str(channel.id)] += amount
        self._apply(channel)

    @rule(i=st.integers(0, 50), reason=st.sampled_from(["requested", "expired"]))
    def close(self, i: int, reason: str) -> None:
        channel = self.channels[i % len(self.channels)]
        channel.request_close(META, now_s=self.now, reason=reason)
        self._apply(channel)

    @rule(i=st.integers(0, 50))
    def settle(self, i: int) -> None:
        channel = self.channels[i % len(self.channels)]
        try:
            channel.settle(META, settlement_ref="0xabc")
        except InvalidState:
            assert channel.status in ("open", "pending")
        self._apply(channel)

    def _refundable(self) -> list[Channel]:
        return [c for c in self.channels if c.card_refunds_pending()]

    @precondition(lambda self: self._refundable())
    @rule(i=st.integers(0, 50), outcome=st.sampled_from(["sent", "refused", "failed_later", "resolved"]))
    def card_refund(self, i: int, outcome: str) -> None:
        candidates = self._refundable()
        channel = candidates[i % len(candidates)]
        intent_id = channel.card_refunds_pending()[0]["payment_intent_id"]
        if outcome in ("refused", "resolved"):
            assert channel.mark_card_refund_failed(META, intent_id, "refused")
        else:
            assert channel.mark_card_refund_sent(META, intent_id, f"re_{intent_id}")
        if outcome == "failed_later":  # Stripe's refund.failed, delivered twice
            assert channel.mark_card_refund_failed_later(META, intent_id, f"re_{intent_id}", "card closed")
            assert not channel.mark_card_refund_failed_later(META, intent_id, f"re_{intent_id}", "card closed")
        if outcome == "resolved":  # an operator paid it back another way
            assert channel.resolve_card_refund(META, intent_id, "bank transfer")
        assert not channel.mark_card_refund_sent(META, intent_id, "re_again")  # once per plan entry
        self._apply(channel)

    @precondition(lambda self: True)
    @rule(seconds=st.integers(0, 600))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds

    @invariant()
    def ledger_invariants(self) -> None:
        ledger.check_balances(self.balances)
        for channel in self.channels:
            channel.check_invariants()
            cid = str(channel.id)
            assert channel.spent_minor == self.acknowledged[cid]
            assert channel.fee_minor == fee_for(channel.spent_minor, channel.fee_bps)  # exact, micro-debits too
            assert self.sellers[cid] + channel.fee_minor == channel.spent_minor
            total = channel.settled_minor if channel.status == "settled" else channel.spent_minor
            assert self.fees[cid] == fee_for(total, channel.fee_bps)  # what the platform keeps of this channel
            account = ledger.channel_account(self.refs[cid])
            refused = sum(r["amount_minor"] for r in channel.card_refunds.values() if r["status"] == "failed")
            expected = refused if channel.status == "settled" else channel.deposit_minor - channel.spent_minor
            assert self.balances[(account, channel.currency)] == expected
            plan = channel.card_refund_plan()
            assert sum(p["amount_minor"] for p in plan) == (channel.refunded_minor if plan else 0)
            assert all(p["amount_minor"] <= channel.funding_minor["stripe:" + p["payment_intent_id"]] for p in plan)


TestChannelLedger = ChannelMachine.TestCase
TestChannelLedger.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                      suppress_health_check=list(HealthCheck))


def test_invariant_violation_is_detected() -> None:
    with pytest.raises(LedgerInvariantViolated):
        ledger.check_balanced([ledger.Posting("a", "USD", 1)])
    with pytest.raises(LedgerInvariantViolated):
        ledger.check_balances({("buyer:x:channel:y", "USD"): -1, ("external:stripe", "USD"): 1})
