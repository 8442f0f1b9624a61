"""POST /v1/invocations and GET /v1/invocations/{id} on PostgreSQL: the hold and the token in
one save, replays, refusals with their codes, held money nobody else can spend, the capture
from the node's final report, settlement waiting for holds, the balances read model."""

from __future__ import annotations

from typing import Any

import pytest

from domain.model.errors import MarketError
from domain.model.invoke import stored_claims
from tests.invocations.session import Market
from tests.purchases.shop import Shop


def held_of(mkt: Shop, channel_id: str) -> dict[str, Any]:
    mkt.catch_up()
    return mkt.runtime.views.fetchone("SELECT held_minor, spent_minor, fee_minor FROM money_channels"
                                      " WHERE channel_id = ?", (channel_id,))


def test_open_holds_the_budget_and_issues_a_token_for_the_seller_device(mkt: Market) -> None:
    s = mkt.session(budget_minor=700, max_concurrency=2)
    c = s.claims
    assert (c.sub, c.aud, c.unit, c.unit_price_minor, c.budget_minor, c.max_call_units, c.max_concurrency) == (
        s.id, s.seller["id"], "calls", 7, 700, 1, 2)
    assert c.exp - c.iat == 3600 and c.start_by - c.iat == 900
    channel = mkt.channel(s.buyer)
    assert (channel["held_minor"], channel["remaining_minor"], channel["spent_minor"]) == (700, 9_300, 0)
    assert held_of(mkt, s.buyer["channel_id"])["held_minor"] == 700
    seen = mkt.client.simulate_get(f"/v1/invocations/{s.id}", headers=s.buyer["headers"])
    assert seen.status_code == 200 and seen.json["invoke_token"] == s.answer["invoke_token"]
    assert seen.json["status"] == "open"
    by_seller = mkt.client.simulate_get(f"/v1/invocations/{s.id}", headers=s.seller["headers"])
    assert by_seller.status_code == 200 and "invoke_token" not in by_seller.json
    stranger = mkt.buyer()
    r = mkt.client.simulate_get(f"/v1/invocations/{s.id}", headers=stranger["headers"])
    assert (r.status_code, r.json["code"]) == (404, "invocation_not_found")


def test_a_retry_replays_the_same_token_and_another_body_is_refused(mkt: Market) -> None:
    seller, buyer = mkt.seller(), mkt.buyer()
    listing_id = mkt.compute_listing(seller)
    from domain.model.keys import SigningKey

    key = SigningKey.generate()
    first = mkt.open(buyer, listing_id, key="k-1", buyer_key=key)
    again = mkt.open(buyer, listing_id, key="k-1", buyer_key=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json["invoke_token"] == first.json["invoke_token"]
    other = mkt.open(buyer, listing_id, key="k-1", budget_minor=50)
    assert (other.status_code, other.json["code"]) == (409, "idempotency_key_reused")
    assert mkt.channel(buyer)["held_minor"] == 100  # one hold


def test_refusals_have_their_codes(mkt: Market) -> None:
    seller, buyer = mkt.seller(), mkt.buyer(1_000)
    compute = mkt.compute_listing(seller)
    dataset = mkt.listing(seller)
    euro = mkt.compute_listing(seller, currency="EUR")

    def code(r: Any) -> tuple[int, str]:
        return r.status_code, r.json["code"]

    assert code(mkt.open(buyer, dataset)) == (409, "listing_not_invocable")
    assert code(mkt.open(buyer, euro)) == (422, "currency_mismatch")
    rows = mkt.compute_listing(seller, unit="rows")
    assert code(mkt.open(buyer, rows)) == (422, "invalid_input")  # rows need max_call_units
    assert mkt.open(buyer, rows, max_call_units=10).status_code == 201
    assert code(mkt.open(buyer, compute, budget_minor=5)) == (422, "invalid_input")  # not one call's worth
    r = mkt.open(buyer, compute, budget_minor=2_000)
    assert code(r) == (402, "channel_exhausted") and r.json["available_minor"] == 900
    own = mkt.compute_listing(seller)
    seller_buyer = {**seller, "channel_id": buyer["channel_id"]}
    assert code(mkt.open(seller_buyer, own)) in ((404, "not_found"), (403, "forbidden"))  # not their channel
    assert code(mkt.open(buyer, compute, max_concurrency=65)) == (422, "invalid_input")


def test_debits_and_purchases_cannot_spend_a_held_amount(mkt: Market) -> None:
    s = mkt.session(budget_minor=9_000)
    r = mkt.client.simulate_post(f"/v1/channels/{s.buyer['channel_id']}/debits",
                                 json={"amount_minor": 1_001, "seller_account_id": s.seller["seller"]["id"]},
                                 headers={**s.buyer["headers"], "Idempotency-Key": "d-1"})
    assert (r.status_code, r.json["code"], r.json["available_minor"]) == (402, "channel_exhausted", 1_000)
    dataset = mkt.listing(s.seller, price_minor=1_500)
    r = mkt.buy(s.buyer, dataset)
    assert (r.status_code, r.json["code"]) == (402, "channel_exhausted")


def test_the_final_report_captures_with_the_fee_and_releases_the_rest(mkt: Market) -> None:
    s = mkt.session(budget_minor=700)
    changed = mkt.report_final(s, mkt.final_body(s, 40, countersigned_units=40))
    assert len(changed) == 2
    channel = mkt.channel(s.buyer)
    assert (channel["spent_minor"], channel["held_minor"], channel["remaining_minor"]) == (280, 0, 9_720)
    assert channel["fee_minor"] == 14  # 5 % of 280
    view = mkt.client.simulate_get(f"/v1/invocations/{s.id}", headers=s.buyer["headers"]).json
    assert (view["status"], view["captured_minor"], view["fee_minor"], view["released_minor"]) == (
        "captured", 280, 14, 420)
    assert mkt.report_final(s, mkt.final_body(s, 40, countersigned_units=40)) == ()  # a duplicate
    assert mkt.channel(s.buyer)["spent_minor"] == 280
    row = held_of(mkt, s.buyer["channel_id"])
    assert (row["held_minor"], row["spent_minor"], row["fee_minor"]) == (0, 280, 14)
    earned = mkt.runtime.views.fetchone("SELECT gross_minor, net_minor FROM seller_earnings WHERE"
                                        " seller_account_id = ?", (s.seller["seller"]["id"],))
    assert (earned["gross_minor"], earned["net_minor"]) == (280, 266)
    balances = mkt.runtime.views.fetchall("SELECT currency, SUM(balance_minor) AS s FROM ledger_balances"
                                          " GROUP BY currency")
    assert all(int(b["s"]) == 0 for b in balances)


def test_a_report_from_another_device_or_with_a_changed_price_is_refused(mkt: Market) -> None:
    s = mkt.session()
    other = mkt.session()
    with pytest.raises(MarketError) as exc:
        mkt.market.invocations.apply_final({}, mkt.device(other), mkt.final_body(s, 3))
    assert exc.value.code == "invocation_wrong_device"
    body = mkt.final_body(s, 3, unit_price_minor=8, cumulative_amount_minor=24)
    with pytest.raises(MarketError) as exc:
        mkt.report_final(s, body)
    assert exc.value.code == "invoke_unit_price_changed"
    assert mkt.channel(s.buyer)["held_minor"] == 100


def test_a_channel_closed_during_a_session_settles_when_its_hold_ends(mkt: Market) -> None:
    s = mkt.session(budget_minor=700)
    r = mkt.client.simulate_post(f"/v1/channels/{s.buyer['channel_id']}/close", headers=s.buyer["headers"])
    assert r.status_code == 200 and (r.json["status"], r.json["held_minor"], r.json["refunded_minor"]) == (
        "closing", 700, 0)
    other = mkt.open(s.buyer, s.answer["listing_id"])
    assert other.status_code == 409  # closing: no new holds
    mkt.report_final(s, mkt.final_body(s, 10, countersigned_units=10))
    channel = mkt.channel(s.buyer)
    assert (channel["status"], channel["settled_minor"], channel["refunded_minor"]) == ("settled", 70, 9_930)


def test_the_call_cap_is_the_listings_and_the_buyer_cannot_lower_it(mkt: Market) -> None:
    """The node bills a call at most the token's ``max_call_units``: a buyer naming less than the
    seller's signed ``max_units_per_call`` would pay less than the units the node counts."""
    seller, buyer = mkt.seller(), mkt.buyer(10_000)
    rows = mkt.compute_listing(seller, unit="rows", price_minor=1, max_units_per_call=500)
    low = mkt.open(buyer, rows, budget_minor=1_000, max_call_units=10)
    assert (low.status_code, low.json["code"], low.json["param"]) == (422, "invalid_input", "max_call_units")
    r = mkt.open(buyer, rows, budget_minor=1_000)
    assert r.status_code == 201, r.json
    assert stored_claims(r.json["invoke_token"]).max_call_units == 500
