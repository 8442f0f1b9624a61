"""Fees on cumulative spend (issue "Hardening", finding 5): a debit's fee is what it adds to
``floor(spent * fee_bps / 10000)``, so a channel's fees add up to exactly that however small
its debits; recorded fees are never recomputed (old logs replay to the same balances)."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.model import ledger
from domain.model.channel import Channel
from domain.model.channel_rules import debit_fee, fee_for
from domain.model.errors import InsufficientFunds, InvalidInput, InvalidState
from domain.model.ledger import ChannelRef, LedgerInvariantViolated
from domain.model.settlement import check_split
from ops.ledger_audit import LedgerAudit
from tests.money.conftest import catch_up, debit, open_card_channel, person

META = {"actor": "test", "correlation_id": "c", "causation_id": "c"}
SELLERS = [str(uuid.UUID(int=i + 1)) for i in range(4)]
NOW = 1_000_000


def new_channel(rail: str = "card", deposit: int = 1_000, fee_bps: int = 500, allowance: int = 0) -> Channel:
    return Channel(id=uuid.uuid4(), meta=META, buyer_account_id="b", currency="TUSD" if rail == "chain" else "USD",
                   rail=rail, deposit_minor=deposit, funding_ref="stripe:pi_open" if rail == "card" else "tx0",
                   expiry_s=NOW + 10**6, fee_bps=fee_bps, unsigned_allowance_minor=allowance,
                   buyer_wallet="0x" + "1" * 40, chain_channel_id="0x" + "2" * 64, opened_at_s=NOW)


def micro_debits(total: int, largest: int, seed: int) -> list[int]:
    """Random debits of 1..largest units adding up to ``total``."""
    rng, out = random.Random(seed), []
    while sum(out) < total:
        out.append(min(rng.randint(1, largest), total - sum(out)))
    return out


def postings_of(ref: ChannelRef, events: list[Any]) -> dict[tuple[str, str], int]:
    balances: dict[tuple[str, str], int] = defaultdict(int)
    for event in events:
        postings = ledger.channel_postings(ref, event)
        ledger.check_balanced(postings)
        for p in postings:
            balances[(p.account, p.currency)] += p.amount_minor
    return balances


def ref_of(channel: Channel) -> ChannelRef:
    return ChannelRef(str(channel.id), channel.buyer_account_id, channel.currency, channel.rail)


@pytest.mark.parametrize(("total", "largest", "fee"), [(1_000, 15, 50), (40_952, 39, 2_047)])
def test_micro_debits_pay_the_configured_rate(total: int, largest: int, fee: int) -> None:
    """The finding: 1,000 units in 1-15-unit debits at 500 bps paid 0 (each debit's fee was
    rounded down to nothing); 40,952 units paid 1,079 (2.6 %). Now exactly 5 % of the spend."""
    amounts = micro_debits(total, largest, seed=total)
    assert sum(fee_for(a, 500) for a in amounts) < fee  # the old per-debit rounding
    channel = new_channel(deposit=total)
    fees = [channel.debit(META, key=f"k{i}", request_hash=str(a), amount_minor=a, seller_account_id=SELLERS[i % 2],
                          purpose="", now_s=NOW)["fee_minor"] for i, a in enumerate(amounts)]
    assert sum(fees) == channel.fee_minor == fee == total * 500 // 10_000
    assert all(fee_for(a, 500) <= f <= fee_for(a, 500) + 1 for a, f in zip(amounts, fees, strict=True))
    channel.request_close(META, now_s=NOW)
    channel.settle(META, settlement_ref="internal")
    channel.check_invariants()
    balances = postings_of(ref_of(channel), channel.collect_events())
    ledger.check_balances(balances)
    assert balances[(ledger.PLATFORM_FEES, "USD")] == fee
    assert sum(b for (a, _), b in balances.items() if a.startswith("seller:")) == total - fee


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_micro_debits_through_the_api_and_the_statement(money_client, money_runtime, stripe_stub) -> None:
    buyer, seller = person(money_client, ["buyer"]), person(money_client, ["seller"])
    channel_id, _ = open_card_channel(money_client, stripe_stub, buyer, 1_000)
    for amount in micro_debits(1_000, 15, seed=1):
        assert debit(money_client, buyer, channel_id, seller["id"], amount).status_code == 201
    view = money_client.simulate_get(f"/v1/channels/{channel_id}", headers=buyer["headers"]).json
    assert (view["spent_minor"], view["fee_minor"]) == (1_000, 50)
    catch_up(money_runtime)
    statement = money_client.simulate_get("/v1/statements", headers=seller["headers"]).json
    assert statement["totals"] == [{"currency": "USD", "gross_minor": 1_000, "fee_minor": 50, "net_minor": 950}]


def test_a_replay_returns_the_recorded_fee() -> None:
    channel = new_channel()
    first = channel.debit(META, key="a", request_hash="h", amount_minor=10, seller_account_id=SELLERS[0],
                          purpose="", now_s=NOW)
    second = channel.debit(META, key="b", request_hash="h", amount_minor=10, seller_account_id=SELLERS[1],
                           purpose="", now_s=NOW)
    assert (first["fee_minor"], second["fee_minor"]) == (0, 1)  # cumulative 10 -> 0, 20 -> 1
    channel.debit(META, key="c", request_hash="h", amount_minor=7, seller_account_id=SELLERS[0], purpose="", now_s=NOW)
    again = channel.debit(META, key="b", request_hash="h", amount_minor=10, seller_account_id=SELLERS[1],
                          purpose="", now_s=NOW)
    assert again == {**second, "replayed": True}  # not debit_fee(27, 10) == 0: the fee it was charged
    assert channel.spent_minor == 27 and channel.fee_minor == 1


def legacy_debits(channel: Channel, amounts: list[int]) -> None:
    """Debits as the per-debit rule recorded them (``fee_for(amount)`` in each ``Debited``)."""
    for i, amount in enumerate(amounts):
        channel.trigger_event(Channel.Debited, meta=META, amount_minor=amount, fee_minor=fee_for(amount, channel.fee_bps),
                              seller_account_id=SELLERS[i % 2], purpose="", idempotency_key=f"old{i}",
                              request_hash="h", at_s=NOW)


def test_an_old_log_replays_to_its_recorded_fees_and_goes_on_with_the_new_rule() -> None:
    channel = new_channel(deposit=2_000)
    legacy_debits(channel, [7] * 100)  # 700 spent, 0 fee recorded
    old_log = channel.collect_events()
    replayed: Any = None
    for event in old_log:
        replayed = event.mutate(replayed)
    assert (replayed.spent_minor, replayed.fee_minor) == (700, 0)  # never recomputed
    assert postings_of(ref_of(channel), old_log)[(ledger.PLATFORM_FEES, "USD")] == 0

    # New debits take what they add to the cumulative fee; the old shortfall (35) stays, so the
    # channel stays within the contract's bound and no new debit pays for the old ones.
    for i in range(300):
        replayed.debit(META, key=f"new{i}", request_hash="h", amount_minor=1, seller_account_id=SELLERS[2],
                       purpose="", now_s=NOW)
    assert replayed.fee_minor == fee_for(1_000, 500) - fee_for(700, 500) == 15
    assert replayed.sellers[SELLERS[2]] == {"net_minor": 285, "fee_minor": 15}
    replayed.check_invariants()

    audit = LedgerAudit(tracked_position=None)
    for position, event in enumerate(old_log + replayed.collect_events(), start=1):
        audit.feed(position, event)
    assert audit.report(None, None) and audit.problems == []


def test_the_audit_reports_a_fee_that_follows_no_rule() -> None:
    channel = new_channel()
    channel.debit(META, key="a", request_hash="h", amount_minor=30, seller_account_id=SELLERS[0], purpose="",
                  now_s=NOW)
    channel.trigger_event(Channel.Debited, meta=META, amount_minor=30, fee_minor=0, seller_account_id=SELLERS[0],
                          purpose="", idempotency_key="forged", request_hash="h", at_s=NOW)
    audit = LedgerAudit(tracked_position=None)
    for position, event in enumerate(channel.collect_events(), start=1):
        audit.feed(position, event)
    audit.report(None, None)
    assert audit.problems == [f"position 3: channel {channel.id}: debit fee 0 is not the fee rule's 2 "
                              "(nor the older per-debit 1)"]


def test_a_debit_fee_outside_its_amount_never_posts() -> None:
    ref = ChannelRef("c", "b", "USD", "card")
    with pytest.raises(LedgerInvariantViolated):
        ledger.debited(ref, 5, 6, SELLERS[0])
    with pytest.raises(LedgerInvariantViolated):
        ledger.debited(ref, 5, -1, SELLERS[0])


def test_the_rule_stays_within_each_debit() -> None:
    assert debit_fee(0, 1, 10_000) == 1 and debit_fee(19, 1, 500) == 1 and debit_fee(20, 19, 500) == 0
    assert all(0 <= debit_fee(b, a, 9_999) <= a for b in range(0, 50) for a in range(1, 30))


# -- property: random debit sequences with top-ups and closes interleaved ----------------------
SIGN = st.sampled_from(["exact", "exact", "short", "none"])
DEBIT = st.tuples(st.just("debit"), st.integers(0, 1), st.integers(1, 10**6), st.integers(0, 3), SIGN)
MICRO = st.tuples(st.just("debit"), st.integers(0, 1), st.integers(1, 25), st.integers(0, 3), SIGN)
OPS = st.lists(st.one_of(
    DEBIT, DEBIT, MICRO, MICRO, MICRO, MICRO,
    st.tuples(st.just("top_up"), st.integers(0, 1), st.integers(1, 10**6)),
    st.tuples(st.just("replay"), st.integers(0, 1), st.integers(0, 200)),
    st.tuples(st.just("close"), st.integers(0, 1), st.integers(0, 3))), min_size=20, max_size=120)


class Books:
    """Two channels (card and chain) at one rate, their postings, and what each debit answered."""

    def __init__(self, fee_bps: int, allowance: int) -> None:
        self.channels = [new_channel("card", 10**7, fee_bps), new_channel("chain", 10**7, fee_bps, allowance)]
        self.balances: dict[tuple[str, str], int] = defaultdict(int)
        self.fees: dict[int, int] = defaultdict(int)  # channel index -> postings to platform:fees
        self.answers: list[tuple[int, str, dict[str, Any]]] = []
        self.serial = 0

    def post(self, i: int) -> None:
        channel = self.channels[i]
        for event in channel.collect_events():
            postings = ledger.channel_postings(ref_of(channel), event)
            ledger.check_balanced(postings)
            for p in postings:
                self.balances[(p.account, p.currency)] += p.amount_minor
                self.fees[i] += p.amount_minor if p.account == ledger.PLATFORM_FEES else 0
            if type(event).__name__ == "Debited":  # seller + fee == what the buyer spent
                seller = sum(p.amount_minor for p in postings if p.account.startswith("seller:"))
                assert seller + event.fee_minor == event.amount_minor

    def debit(self, i: int, amount: int, seller: int, sign: str) -> None:
        channel = self.channels[i]
        before, self.serial = channel.spent_minor, self.serial + 1
        voucher = None
        if channel.rail == "chain" and sign != "none":
            signed = before + amount - (channel.unsigned_allowance_minor if sign == "short" else 0)
            voucher = {"cumulative_minor": max(signed, channel.voucher_minor), "signature": "0xsig"}
        key = f"k{self.serial}"
        try:
            answer = channel.debit(META, key=key, request_hash=key, amount_minor=amount,
                                   seller_account_id=SELLERS[seller], purpose="", now_s=NOW, voucher=voucher)
        except (InsufficientFunds, InvalidState, InvalidInput):
            assert channel.spent_minor == before
            return
        assert answer["fee_minor"] == debit_fee(before, amount, channel.fee_bps)
        assert 0 <= answer["fee_minor"] <= amount
        self.answers.append((i, key, answer))

    def close(self, i: int) -> None:
        channel = self.channels[i]
        channel.request_close(META, now_s=NOW)
        if channel.status != "closing":
            return
        split = channel.settlement_split()
        fee, cumulative = split["fee_minor"], split["cumulative_minor"]
        assert fee == fee_for(cumulative, channel.fee_bps)  # exactly the rate on what is settled
        if channel.rail == "chain" and cumulative:  # what the contract is sent, checked as it checks it
            check_split(cumulative_minor=cumulative, amounts=[a for a in split["seller_amounts"].values() if a],
                        fee_minor=fee, fee_bps=channel.fee_bps, voucher_minor=channel.voucher_minor,
                        deposit_minor=channel.deposit_minor)
            assert fee * 10_000 <= cumulative * channel.fee_bps < (fee + 1) * 10_000
        channel.settle(META, settlement_ref="0xabc" if channel.rail == "chain" else "internal")

    def check(self) -> None:
        ledger.check_balances(self.balances)
        for i, channel in enumerate(self.channels):
            channel.check_invariants()
            bps = channel.fee_bps
            assert channel.fee_minor == fee_for(channel.spent_minor, bps)
            assert sum(s["net_minor"] + s["fee_minor"] for s in channel.sellers.values()) == channel.spent_minor
            assert sum(s["fee_minor"] for s in channel.sellers.values()) == channel.fee_minor
            total = channel.settled_minor if channel.status == "settled" else channel.spent_minor
            assert self.fees[i] == fee_for(total, bps)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(fee_bps=st.sampled_from([0, 1, 500, 999, 10_000]) | st.integers(0, 10_000),
       allowance=st.sampled_from([0, 50]), ops=OPS)
def test_the_fee_over_any_channel_is_the_rate_on_its_total(fee_bps: int, allowance: int, ops: list[tuple]) -> None:
    books = Books(fee_bps, allowance)
    for op in ops:
        kind, i = op[0], op[1]
        if kind == "debit":
            books.debit(i, op[2], op[3], op[4])
        elif kind == "top_up":
            try:
                books.channels[i].top_up(META, amount_minor=op[2], funding_ref=f"stripe:pi_t{books.serial}_{op[2]}")
            except InvalidState:
                assert books.channels[i].status == "settled"
        elif kind == "replay" and books.answers:
            j, key, answer = books.answers[op[2] % len(books.answers)]
            assert books.channels[j].replay(key, key) == {**answer, "replayed": True}  # the fee it was charged
        elif kind == "close" and op[2] == 0:  # a close one time in four: channels live a while
            books.close(i)
        books.post(i)
        books.check()
