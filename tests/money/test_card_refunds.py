"""Card refunds: the unspent part of a closed card channel goes back to the buyer's card.

The plan splits the refund over the channel's PaymentIntents (newest first, none refunded
above what it paid); the worker sends each part through the real stripe library to the
loopback stub with a key made of the channel and the intent, so a transient failure, a crash
after Stripe answered, or a redelivered message never refunds twice."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from eventsourcing.domain import Snapshot

from domain.model import ledger
from domain.model.channel import Channel
from domain.model.errors import InvalidState, PaymentProviderUnavailable
from domain.model.ledger import LedgerInvariantViolated
from ops.audit import verify_log
from tests.money.conftest import catch_up, deliver_webhook, open_card_channel, person
from tests.stubs import payment_intent_succeeded_event, webhook_event
from workers.jobs import Jobs, schedules
from workers.refunds import send_card_refunds, sweep_refunds

META = {"actor": "test", "correlation_id": "c", "causation_id": ""}


# -- the plan (pure) ------------------------------------------------------------------------------


def settled_card_channel(fundings: list[tuple[str, int]], spent_minor: int) -> Channel:
    channel = Channel(id=uuid.uuid4(), meta=META, buyer_account_id="b", currency="USD", rail="card",
                      deposit_minor=0, funding_ref="", expiry_s=10**10, fee_bps=500, unsigned_allowance_minor=0,
                      buyer_wallet="", chain_channel_id="", opened_at_s=0)
    for ref, amount in fundings:
        channel.top_up(META, amount_minor=amount, funding_ref=ref)
    if spent_minor:
        channel.debit(META, key="k", request_hash="h", amount_minor=spent_minor, seller_account_id="s",
                      purpose="", now_s=1)
    channel.request_close(META, now_s=2)
    channel.settle(META, settlement_ref="internal")
    return channel


def parts(channel: Channel) -> list[tuple[str, int]]:
    return [(p["payment_intent_id"], p["amount_minor"]) for p in channel.card_refund_plan()]


def test_plan_refunds_newest_intent_first_never_above_what_it_paid() -> None:
    fundings = [("stripe:pi_a", 3_000), ("stripe:pi_b", 2_000), ("stripe:pi_c", 500)]
    assert parts(settled_card_channel(fundings, 0)) == [("pi_c", 500), ("pi_b", 2_000), ("pi_a", 3_000)]
    assert parts(settled_card_channel(fundings, 2_700)) == [("pi_c", 500), ("pi_b", 2_000), ("pi_a", 300)]
    assert parts(settled_card_channel(fundings, 5_000)) == [("pi_c", 500)]
    assert parts(settled_card_channel(fundings, 5_200)) == [("pi_c", 300)]
    assert parts(settled_card_channel(fundings, 5_500)) == []  # all spent: nothing to refund
    channel = settled_card_channel(fundings, 1_000)
    plan = channel.card_refund_plan()
    assert sum(p["amount_minor"] for p in plan) == channel.refunded_minor == 4_500
    assert plan == channel.card_refund_plan()  # deterministic, keys included
    assert plan[0]["refund_key"] == f"rf_{channel.id.hex}_pi_c"


def test_each_part_is_recorded_once_and_replays_from_events() -> None:
    channel = settled_card_channel([("stripe:pi_a", 3_000), ("stripe:pi_b", 2_000)], 2_500)
    assert channel.mark_card_refund_sent(META, "pi_b", "re_1") is True
    assert channel.mark_card_refund_sent(META, "pi_b", "re_2") is False  # a retry records nothing
    assert channel.mark_card_refund_failed(META, "pi_b", "late refusal") is False
    with pytest.raises(InvalidState):
        channel.mark_card_refund_sent(META, "pi_unknown", "re_3")  # not in the plan
    assert [p["payment_intent_id"] for p in channel.card_refunds_pending()] == ["pi_a"]
    assert channel.mark_card_refund_failed(META, "pi_a", "card closed") is True
    channel.check_invariants()
    assert channel.card_refunds_pending() == []
    rebuilt = None
    for event in channel.collect_events():
        rebuilt = event.mutate(rebuilt)
    assert rebuilt is not None and rebuilt.card_refunds == channel.card_refunds
    assert rebuilt.card_refunds["pi_b"] == {"amount_minor": 2_000, "status": "sent", "stripe_refund_id": "re_1",
                                           "reason": ""}
    # Tampered state (a refund above what the intent paid) is caught by the invariants.
    channel.card_refunds["pi_b"]["amount_minor"] = 2_001
    with pytest.raises(LedgerInvariantViolated):
        channel.check_invariants()


def test_no_plan_for_open_or_chain_channels_and_none_for_unknown_fundings() -> None:
    channel = Channel(id=uuid.uuid4(), meta=META, buyer_account_id="b", currency="TUSD", rail="chain",
                      deposit_minor=1_000, funding_ref="0xabc:0", expiry_s=10**10, fee_bps=500,
                      unsigned_allowance_minor=0, buyer_wallet="0x" + "1" * 40, chain_channel_id="0x1", opened_at_s=0)
    assert channel.card_refund_plan() == []
    channel.request_close(META, now_s=1)
    channel.settle(META, settlement_ref="internal")
    assert channel.refunded_minor == 1_000 and channel.card_refund_plan() == []
    with pytest.raises(InvalidState):
        settled_card_channel([("manual-credit", 100)], 0).card_refund_plan()


def test_snapshot_from_before_funding_amounts_still_loads() -> None:
    one = settled_card_channel([("stripe:pi_a", 900)], 100)
    two = settled_card_channel([("stripe:pi_a", 900), ("stripe:pi_b", 100)], 100)
    for channel in (one, two):
        old = Snapshot.take(channel)
        state = {k: v for k, v in old.state.items() if k not in ("funding_minor", "card_refunds", "class_version")}
        loaded = Snapshot(originator_id=old.originator_id, originator_version=old.originator_version,
                          timestamp=old.timestamp, topic=old.topic, state=state).mutate(None)
        assert isinstance(loaded, Channel) and loaded.refunded_minor == channel.refunded_minor
        loaded.check_invariants()
        if channel is one:
            assert parts(loaded) == [("pi_a", 800)]  # one funding made the whole deposit
        else:
            with pytest.raises(InvalidState):  # the split is not in the snapshot: an operator refunds
                loaded.card_refund_plan()


# -- end to end on PostgreSQL ------------------------------------------------------------------------


def top_up_card(client: Any, stub: Any, buyer: dict[str, Any], channel_id: str, amount_minor: int) -> str:
    r = client.simulate_post(f"/v1/channels/{channel_id}/top-ups", json={"amount_minor": amount_minor},
                             headers={**buyer["headers"], "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 201, r.json
    intent = stub.succeed_payment_intent(r.json["payment"]["payment_intent_id"])
    w = deliver_webhook(client, payment_intent_succeeded_event(intent))
    assert w.status_code == 200 and w.json["credited"] is True, w.json
    return intent["id"]


def closed_two_intent_channel(client: Any, stub: Any, runtime: Any) -> tuple[dict[str, Any], str, dict[str, int]]:
    """Funded 3,000 + 2,000 by two PaymentIntents, 2,500 spent, closed: 2,500 to refund."""
    buyer, seller = person(client, ["buyer"]), person(client, ["seller"])
    channel_id, _ = open_card_channel(client, stub, buyer, 3_000)
    pi_open = next(iter(stub.payment_intents))
    pi_top_up = top_up_card(client, stub, buyer, channel_id, 2_000)
    d = client.simulate_post(f"/v1/channels/{channel_id}/debits",
                             json={"amount_minor": 2_500, "seller_account_id": seller["id"]},
                             headers={**buyer["headers"], "Idempotency-Key": "d1"})
    assert d.status_code == 201, d.json
    closed = client.simulate_post(f"/v1/channels/{channel_id}/close", headers=buyer["headers"])
    assert closed.json["status"] == "settled" and closed.json["refunded_minor"] == 2_500
    catch_up(runtime)
    return buyer, channel_id, {pi_open: 3_000, pi_top_up: 2_000}


def paid_late(runtime: Any, stub: Any, channel_id: str, amount_minor: int) -> tuple[str, bytes]:
    """A top-up intent for the channel, paid now: its id and its signed-webhook body."""
    intent = runtime.market.money.cards.create_payment_intent(
        amount_minor=amount_minor, currency="USD", channel_id=channel_id, idempotency_key=uuid.uuid4().hex)
    return intent["id"], payment_intent_succeeded_event(stub.succeed_payment_intent(intent["id"]))


def refunded_at_stub(stub: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for refund in stub.refunds.values():
        out[refund["payment_intent"]] = out.get(refund["payment_intent"], 0) + refund["amount"]
    return out


def assert_ledger_balanced(runtime: Any) -> dict[str, int]:
    rows = runtime.views.fetchall("SELECT * FROM ledger_balances")
    ledger.check_balances({(r["account"], r["currency"]): int(r["balance_minor"]) for r in rows})
    return {r["account"]: int(r["balance_minor"]) for r in rows}


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_unspent_money_goes_back_to_the_cards_once(money_client, money_runtime, stripe_stub, monkeypatch) -> None:
    buyer, channel_id, funded = closed_two_intent_channel(money_client, stripe_stub, money_runtime)
    pi_open, pi_top_up = funded
    queued: list[str] = []
    assert sweep_refunds(money_runtime, queued.append) == [channel_id] == queued

    stripe_stub.fail_next(3, status=500)  # the library retries twice, then the actor must retry
    with pytest.raises(PaymentProviderUnavailable):
        send_card_refunds(money_runtime, channel_id)
    assert stripe_stub.refunds == {}
    # A crash after Stripe refunded but before we recorded it: the retry must get the same refund.
    market = money_runtime.market
    monkeypatch.setattr(market.refunds, "_card_refund_outcome", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        send_card_refunds(money_runtime, channel_id)
    monkeypatch.undo()
    assert len(stripe_stub.refunds) == 1

    assert send_card_refunds(money_runtime, channel_id) == {pi_top_up: "sent", pi_open: "sent"}
    assert send_card_refunds(money_runtime, channel_id) == {pi_top_up: "sent", pi_open: "sent"}  # redelivered
    assert refunded_at_stub(stripe_stub) == {pi_top_up: 2_000, pi_open: 500}  # exactly the unspent 2,500
    assert all(refunded_at_stub(stripe_stub)[pi] <= funded[pi] for pi in funded)
    made = stripe_stub.requests_to("POST", "/v1/refunds")
    keys = {pi: f"rf_{uuid.UUID(channel_id).hex}_{pi}" for pi in funded}
    assert [(r.idempotency_key, r.status, r.replayed) for r in made] == [
        *[(keys[pi_top_up], 500, False)] * 3, (keys[pi_top_up], 200, False),  # outage, then the crashed run
        (keys[pi_top_up], 200, True), (keys[pi_open], 200, False)]  # the retry: same refund back, then the rest

    catch_up(money_runtime)
    assert sweep_refunds(money_runtime, queued.append) == []  # nothing left to send
    assert len(stripe_stub.requests_to("POST", "/v1/refunds")) == len(made)
    view = money_client.simulate_get(f"/v1/channels/{channel_id}", headers=buyer["headers"]).json
    assert {(r["payment_intent_id"], r["amount_minor"], r["status"]) for r in view["card_refunds"]} == {
        (pi_top_up, 2_000, "sent"), (pi_open, 500, "sent")}
    assert {r["stripe_refund_id"] for r in view["card_refunds"]} == set(stripe_stub.refunds)
    balances = assert_ledger_balanced(money_runtime)
    assert balances[f"buyer:{buyer['id']}:channel:{channel_id}"] == 0


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_refused_refund_is_recorded_and_left_for_an_operator(money_client, money_runtime, stripe_stub) -> None:
    buyer, channel_id, funded = closed_two_intent_channel(money_client, stripe_stub, money_runtime)
    pi_open, pi_top_up = funded
    money_runtime.market.money.cards, gateway = None, money_runtime.market.money.cards
    assert sweep_refunds(money_runtime) == []  # no card rail: refunds stay pending
    assert send_card_refunds(money_runtime, channel_id) == {pi_top_up: "pending", pi_open: "pending"}
    assert stripe_stub.requests_to("POST", "/v1/refunds") == []

    money_runtime.market.money.cards = gateway
    stripe_stub.payment_intents[pi_top_up]["amount_refunded"] = 2_000  # refunded by hand in Stripe's dashboard
    assert send_card_refunds(money_runtime, channel_id) == {pi_top_up: "failed", pi_open: "sent"}
    assert refunded_at_stub(stripe_stub) == {pi_open: 500}
    catch_up(money_runtime)
    assert sweep_refunds(money_runtime) == []  # a refusal is not retried
    balances = assert_ledger_balanced(money_runtime)
    assert balances[f"buyer:{buyer['id']}:channel:{channel_id}"] == 2_000  # the hub still holds it


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_cron_sweep_and_actor_retry_through_dramatiq(money_client, money_runtime, stripe_stub) -> None:
    _, channel_id, funded = closed_two_intent_channel(money_client, stripe_stub, money_runtime)
    pi_open, pi_top_up = funded
    broker = StubBroker()
    broker.emit_after("process_boot")
    jobs = Jobs(broker, lambda: money_runtime)
    assert "sweep_refunds" in [s.name for s in schedules(jobs)]
    worker = Worker(broker, worker_timeout=100)
    worker.start()
    try:
        stripe_stub.fail_next(3, status=503)  # the first run fails; Dramatiq retries with backoff
        jobs.sweep_refunds.send()
        broker.join("payouts", timeout=60_000)
        worker.join()
    finally:
        worker.stop()
    assert refunded_at_stub(stripe_stub) == {pi_top_up: 2_000, pi_open: 500}
    assert [r.status for r in stripe_stub.requests_to("POST", "/v1/refunds")] == [503, 503, 503, 200, 200]
    recorded = money_runtime.market.money.channel(channel_id).card_refunds
    assert {pi: r["status"] for pi, r in recorded.items()} == {pi_top_up: "sent", pi_open: "sent"}


# -- refunds Stripe fails after accepting them (refund.failed) -------------------------------------


def test_a_sent_refund_that_fails_later_is_held_for_the_buyer_again() -> None:
    channel = settled_card_channel([("stripe:pi_a", 3_000), ("stripe:pi_b", 2_000)], 2_500)
    ref = ledger.ChannelRef(str(channel.id), "b", "USD", "card")
    assert channel.mark_card_refund_sent(META, "pi_b", "re_1") is True
    with pytest.raises(InvalidState):
        channel.mark_card_refund_failed_later(META, "pi_b", "re_other", "not ours")
    assert channel.mark_card_refund_failed_later(META, "pi_b", "re_1", "card closed") is True
    assert channel.mark_card_refund_failed_later(META, "pi_b", "re_1", "card closed") is False  # replayed webhook
    # Failed before the worker recorded it sent: recorded failed; the worker's retry then records nothing.
    assert channel.mark_card_refund_failed_later(META, "pi_a", "re_2", "lost card") is True
    assert channel.mark_card_refund_sent(META, "pi_a", "re_2") is False
    assert [e.after_sent for e in channel.pending_events if type(e).__name__ == "CardRefundFailed"] == [True, False]
    assert channel.resolve_card_refund(META, "pi_b", "bank transfer") is True
    assert channel.mark_card_refund_failed_later(META, "pi_b", "re_1", "card closed") is False  # after resolving
    channel.check_invariants()
    assert {pi: (r["status"], r["stripe_refund_id"]) for pi, r in channel.card_refunds.items()} == {
        "pi_b": ("resolved", "re_1"), "pi_a": ("failed", "re_2")}
    postings = [p for e in channel.collect_events() for p in ledger.channel_postings(ref, e)]
    held = sum(p.amount_minor for p in postings if p.account == ledger.channel_account(ref))
    assert held == 500  # refunded, both refunds reversed, the 2,000 paid by an operator


def test_refund_keys_round_trip() -> None:
    from domain.model.channel_rules import card_refund_key, parse_card_refund_key

    channel_id = uuid.uuid4()
    assert parse_card_refund_key(card_refund_key(channel_id, "pi_3Abc")) == (channel_id, "pi_3Abc")
    for bad in (None, 7, "", "rf_xyz_pi_1", f"rf_{channel_id.hex}_ch_1", f"rf_{channel_id.hex}_pi_1 "):
        assert parse_card_refund_key(bad) is None


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_refund_failed_webhook_puts_the_money_back_for_the_buyer(money_client, money_runtime, stripe_stub) -> None:
    buyer, channel_id, funded = closed_two_intent_channel(money_client, stripe_stub, money_runtime)
    pi_open, pi_top_up = funded
    assert send_card_refunds(money_runtime, channel_id) == {pi_top_up: "sent", pi_open: "sent"}
    refund_of = {r["payment_intent"]: r["id"] for r in stripe_stub.refunds.values()}

    failed = stripe_stub.fail_refund(refund_of[pi_top_up])  # 2,000 never reached the card
    forged = deliver_webhook(money_client, webhook_event("refund.failed", failed), secret="whsec_forged")
    assert forged.status_code == 401 and forged.json["code"] == "signature_invalid", forged.json
    body = webhook_event("refund.failed", failed)
    for recorded in (True, False):  # Stripe redelivers: recorded once
        w = deliver_webhook(money_client, body)
        assert w.status_code == 200 and w.json["refund_failure_recorded"] is recorded, w.json
    # The same news in the older event type, for the other refund.
    later = stripe_stub.fail_refund(refund_of[pi_open], reason="lost_or_stolen_card")
    w = deliver_webhook(money_client, webhook_event("charge.refund.updated", later))
    assert w.json["refund_failure_recorded"] is True, w.json
    # A refund that is not ours (no key of ours) is acknowledged and changes nothing.
    foreign = {**failed, "id": "re_foreign", "metadata": {}}
    assert deliver_webhook(money_client, webhook_event("refund.failed", foreign)).json["refund_failure_recorded"] is False
    # A successful refund's update is not a failure.
    ok = deliver_webhook(money_client, webhook_event("refund.updated", {**failed, "status": "succeeded"}))
    assert ok.status_code == 200 and ok.json["refund_failure_recorded"] is None

    # Events naming our key but no refund of ours (another environment, another refund) are
    # acknowledged, never answered with an error Stripe would redeliver for days.
    unknown_channel = {**failed, "metadata": {"refund_key": f"rf_{uuid.uuid4().hex}_{pi_top_up}"}}
    other_refund = {**failed, "id": "re_other"}
    odd_metadata = {**failed, "metadata": "not an object"}
    for obj in (unknown_channel, other_refund, odd_metadata):
        odd = deliver_webhook(money_client, webhook_event("refund.failed", obj))
        assert odd.status_code == 200 and odd.json["refund_failure_recorded"] is False, odd.json

    view = money_client.simulate_get(f"/v1/channels/{channel_id}", headers=buyer["headers"]).json
    assert {(r["payment_intent_id"], r["status"], r["stripe_refund_id"]) for r in view["card_refunds"]} == {
        (pi_top_up, "failed", refund_of[pi_top_up]), (pi_open, "failed", refund_of[pi_open])}
    catch_up(money_runtime)
    assert sweep_refunds(money_runtime) == []  # never resent by itself: an operator pays it another way
    balances = assert_ledger_balanced(money_runtime)
    assert balances[f"buyer:{buyer['id']}:channel:{channel_id}"] == 2_500
    assert balances["external:stripe"] == -2_500 - 2_500  # paid in 5,000, none of it went back out
    audit = verify_log(money_runtime.market, money_runtime.views)  # read model's pending agrees with the log
    assert audit["ok"], audit["problems"]

    # Resolved by an operator, then Stripe sends the same failure again: nothing more is recorded.
    money_runtime.market.refunds.resolve_card_refund(META, channel_id, pi_top_up, "bank transfer")
    again = deliver_webhook(money_client, webhook_event("refund.updated", failed))
    assert again.json["refund_failure_recorded"] is False, again.json
    # A later payment on the settled channel is still sent back (its refund is pending again).
    late_id, body = paid_late(money_runtime, stripe_stub, channel_id, 700)
    deliver_webhook(money_client, body)
    catch_up(money_runtime)
    assert sweep_refunds(money_runtime) == [channel_id]
    assert send_card_refunds(money_runtime, channel_id)[late_id] == "sent"
    catch_up(money_runtime)
    balances = assert_ledger_balanced(money_runtime)
    assert balances[f"buyer:{buyer['id']}:channel:{channel_id}"] == 500  # only the unresolved failed part
    assert balances[ledger.OPERATOR_PAID] == 2_000
    audit = verify_log(money_runtime.market, money_runtime.views)
    assert audit["ok"], audit["problems"]


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_refund_stripe_answers_failed_is_recorded_failed(money_client, money_runtime, stripe_stub) -> None:
    buyer, channel_id, funded = closed_two_intent_channel(money_client, stripe_stub, money_runtime)
    pi_open, pi_top_up = funded
    stripe_stub.fail_next_refund()
    assert send_card_refunds(money_runtime, channel_id) == {pi_top_up: "failed", pi_open: "sent"}
    made = {r["payment_intent"]: r["id"] for r in stripe_stub.refunds.values()}
    recorded = money_runtime.market.money.channel(channel_id).card_refunds
    assert recorded[pi_top_up]["stripe_refund_id"] == made[pi_top_up]  # kept, so a later event can be matched
    catch_up(money_runtime)
    balances = assert_ledger_balanced(money_runtime)
    assert balances[f"buyer:{buyer['id']}:channel:{channel_id}"] == 2_000


# -- a payment that succeeds after the channel settled -------------------------------------------


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_top_up_paid_after_the_close_is_refunded_not_lost(money_client, money_runtime, stripe_stub) -> None:
    buyer, channel_id, funded = closed_two_intent_channel(money_client, stripe_stub, money_runtime)
    pi_open, pi_top_up = funded
    assert send_card_refunds(money_runtime, channel_id) == {pi_top_up: "sent", pi_open: "sent"}
    # A top-up the buyer started before closing, paid only now: the webhook arrives for a settled channel.
    late_id, body = paid_late(money_runtime, stripe_stub, channel_id, 700)
    first, again = deliver_webhook(money_client, body), deliver_webhook(money_client, body)
    assert (first.status_code, first.json["credited"], first.json["returned"]) == (200, False, True), first.json
    assert (again.json["credited"], again.json["returned"]) == (False, False)  # Stripe redelivers: once
    view = money_client.simulate_get(f"/v1/channels/{channel_id}", headers=buyer["headers"]).json
    assert (view["status"], view["deposit_minor"], view["refunded_minor"]) == ("settled", 5_700, 3_200)

    catch_up(money_runtime)
    assert sweep_refunds(money_runtime) == [channel_id]
    assert send_card_refunds(money_runtime, channel_id) == {late_id: "sent", pi_top_up: "sent", pi_open: "sent"}
    assert refunded_at_stub(stripe_stub) == {pi_top_up: 2_000, pi_open: 500, late_id: 700}
    catch_up(money_runtime)
    assert sweep_refunds(money_runtime) == []
    balances = assert_ledger_balanced(money_runtime)
    assert balances[f"buyer:{buyer['id']}:channel:{channel_id}"] == 0


# -- an operator resolves a failed refund -----------------------------------------------------------


def test_an_operator_resolves_a_failed_refund_once() -> None:
    from domain.model.errors import InvalidInput

    channel = settled_card_channel([("stripe:pi_a", 3_000), ("stripe:pi_b", 2_000)], 2_500)
    ref = ledger.ChannelRef(str(channel.id), "b", "USD", "card")
    assert channel.mark_card_refund_sent(META, "pi_b", "re_1")
    assert channel.mark_card_refund_failed(META, "pi_a", "card closed")
    with pytest.raises(InvalidState):
        channel.resolve_card_refund(META, "pi_b", "bank transfer 42")  # sent, not failed
    with pytest.raises(InvalidState):
        channel.resolve_card_refund(META, "pi_unknown", "bank transfer 42")
    for bad in ("", "   ", "x" * 201, None):
        with pytest.raises(InvalidInput):
            channel.resolve_card_refund(META, "pi_a", bad)  # type: ignore[arg-type]
    assert channel.resolve_card_refund(META, "pi_a", " bank transfer 42 ") is True
    assert channel.resolve_card_refund(META, "pi_a", "bank transfer 42") is False
    channel.check_invariants()
    assert channel.card_refunds["pi_a"] == {"amount_minor": 500, "status": "resolved", "stripe_refund_id": "",
                                                 "reason": "bank transfer 42"}
    postings = [p for e in channel.collect_events() for p in ledger.channel_postings(ref, e)]
    ledger.check_balanced(postings)
    held = sum(p.amount_minor for p in postings if p.account == ledger.channel_account(ref))
    assert held == 0  # refunded, reversed, then paid by the operator
    assert sum(p.amount_minor for p in postings if p.account == ledger.OPERATOR_PAID) == 500


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_resolve_refund_from_the_command_line(money_client, money_runtime, stripe_stub, monkeypatch, capsys) -> None:
    from ops import cli
    from tests.conftest import TEST_SECRET

    buyer, channel_id, funded = closed_two_intent_channel(money_client, stripe_stub, money_runtime)
    pi_open, pi_top_up = funded
    stripe_stub.fail_next_refund()
    assert send_card_refunds(money_runtime, channel_id) == {pi_top_up: "failed", pi_open: "sent"}
    settings = money_runtime.settings
    for name, value in {"AIMARKET_DATABASE_URL": settings.database_url, "AIMARKET_DB_SCHEMA": settings.db_schema,
                        "AIMARKET_SECRET": TEST_SECRET}.items():
        monkeypatch.setenv(name, value)
    argv = ["admin", "resolve-refund", channel_id, pi_top_up, "--reference", "SEPA transfer 2026-11-21"]
    assert cli.main(argv) == 0 and cli.main(argv) == 0  # the second run records nothing more
    view = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert {r["payment_intent_id"]: r["status"] for r in view["card_refunds"]} == {pi_top_up: "resolved",
                                                                                  pi_open: "sent"}
    assert cli.main(["admin", "resolve-refund", channel_id, pi_open, "--reference", "x"]) == 2  # not failed
    assert "nothing to resolve" in capsys.readouterr().err
    catch_up(money_runtime)
    balances = assert_ledger_balanced(money_runtime)
    assert balances[f"buyer:{buyer['id']}:channel:{channel_id}"] == 0
    assert balances[ledger.OPERATOR_PAID] == 2_000
