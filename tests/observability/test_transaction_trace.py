"""``GET /v1/transactions/{id}/trace``: a purchase's path from its events, with the traceparent
each fact came with (the seller's node sends the purchase's trace), the node trace that
reported it, log positions and durations; its buyer, its seller and auditors see it, others 404."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest

from domain.model.base import Meta
from domain.model.purchase import Purchase
from node.delivery.trace_context import batch_traceparent
from tests.helpers import auth, device_jwt, login, register
from tests.purchases.model_helpers import NOW_S, Sale
from tests.traces.helpers import enrolled_node

BUYER_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _post(client, node, entries):
    """The node's uplink: a batch of entries, with the purchase's traceparent when it has one."""
    header = batch_traceparent([SimpleNamespace(kind=e.kind, body=e.body) for e in entries])
    headers = {**auth(device_jwt(node.key, node.device_id, int(time.time()))),
               **({"traceparent": header} if header else {})}
    r = client.simulate_post("/v1/traces", json={"envelopes": [node.envelope(e) for e in entries]}, headers=headers)
    assert r.status_code == 200, r.json
    return header


@pytest.fixture
def sold(client, runtime):
    """A purchase of a seller's device by a buyer account, then delivered through traces."""
    seller_node, device = enrolled_node(client)
    buyer = register(client, roles=["buyer"])
    sale = Sale(device_key=seller_node.key, device_id=seller_node.device_id)
    base = sale.purchase()
    purchase = Purchase(
        id=sale.purchase_id, meta={**Meta("account:" + buyer["id"], "buy-1").as_dict(),
                                   "traceparent": f"00-{sale.purchase_id.hex}-1111111111111111-01",
                                   "trace_link": BUYER_TRACE},
        buyer_account_id=buyer["id"], seller_account_id=device["seller"]["id"], seller_device_id=sale.device_id,
        listing_id=sale.listing_id, listing_version=2, channel_id=base.channel_id, price_minor=1999, fee_minor=99,
        currency="USD", idempotency_key="k", request_hash="h", token=sale.token, kid="signing-1", jti=sale.jti,
        cnf_jkt=sale.jkt, issued_at_s=NOW_S, start_by_s=NOW_S + 900, expires_at_s=NOW_S + 86400)
    runtime.market.save(purchase)
    redemption = {"jti": sale.jti, "purchase_id": str(sale.purchase_id), "listing_id": sale.listing_id,
                  "device_id": seller_node.device_id, "jkt": sale.jkt, "bound_at_ms": NOW_S * 1000 + 100}
    headers = [_post(client, seller_node, [seller_node.append("redemption", redemption)])]
    confirmation = sale.confirmation()
    receipt = sale.receipt(confirmation=confirmation)
    headers.append(_post(client, seller_node, [seller_node.append("confirmation", confirmation),
                                               seller_node.append("receipt", receipt)]))
    return SimpleNamespace(sale=sale, buyer=buyer, seller=device["seller"], node=seller_node, headers=headers,
                           id=str(sale.purchase_id))


def test_the_whole_path_in_order_with_its_trace(client, runtime, sold) -> None:
    r = client.simulate_get(f"/v1/transactions/{sold.id}/trace", headers=auth(login(client, sold.buyer["email"])))
    assert r.status_code == 200, r.json
    body = r.json
    trace_id = uuid.UUID(sold.id).hex
    assert (body["transaction_id"], body["kind"], body["trace_id"], body["status"]) == (
        sold.id, "purchase", trace_id, "delivered")
    steps = body["steps"]
    assert [s["step"] for s in steps] == ["purchased", "redeemed", "confirmation", "receipt", "delivered"]
    positions = [s["position"] for s in steps]
    assert positions == sorted(positions) and all(isinstance(p, int) for p in positions)
    assert [s["version"] for s in steps] == [1, 2, 3, 4, 5]
    assert all(s["traceparent"].split("-")[1] == trace_id for s in steps)
    assert steps[0]["trace_link"] == BUYER_TRACE and steps[0]["span_id"] == "1111111111111111"
    # the node's span (as it sent it) is the parent of the hub's span that recorded its batch
    assert steps[1]["parent_span_id"] == sold.headers[0].split("-")[2]
    assert {s["parent_span_id"] for s in steps[2:]} == {sold.headers[1].split("-")[2]}
    assert len({s["span_id"] for s in steps[2:]}) == 1 and steps[1]["span_id"] != steps[2]["span_id"]
    redeemed = steps[1]
    assert redeemed["reported_by"]["device_id"] == sold.node.device_id
    assert (redeemed["reported_by"]["seq"], redeemed["reported_by"]["kind"]) == (1, "redemption")
    assert redeemed["reported_by"]["position"] < redeemed["position"]
    assert steps[3]["reported_by"]["kind"] == "receipt" and steps[4]["reported_by"]["kind"] == "receipt"
    assert redeemed["details"] == {"device_id": sold.node.device_id, "redeemed_at_ms": NOW_S * 1000 + 100}
    assert steps[3]["details"]["outcome"] == "complete" and "intervals" not in steps[3]["details"]
    durations = body["durations_ms"]
    assert durations["purchase_to_redemption_ms"] == steps[1]["at_ms"] - steps[0]["at_ms"] >= 0
    assert durations["redemption_to_receipt_ms"] == steps[3]["at_ms"] - steps[1]["at_ms"]
    assert durations["receipt_to_confirmation_ms"] == steps[2]["at_ms"] - steps[3]["at_ms"]  # it came first
    assert durations["purchase_to_delivery_ms"] == steps[4]["at_ms"] - steps[0]["at_ms"]
    assert sold.sale.token not in r.text and "proofValue" not in r.text


def test_its_seller_and_auditors_see_it_others_do_not(client, runtime, sold) -> None:
    seller = client.simulate_get(f"/v1/transactions/{sold.id}/trace", headers=auth(sold.seller["session"]))
    assert seller.status_code == 200 and len(seller.json["steps"]) == 5
    stranger = register(client, roles=["buyer", "seller"])
    other = client.simulate_get(f"/v1/transactions/{sold.id}/trace", headers=auth(login(client, stranger["email"])))
    assert (other.status_code, other.json["code"]) == (404, "purchase_not_found")
    runtime.market.identity.grant_role(Meta("test", "t").as_dict(), stranger["email"], "auditor")
    auditor = client.simulate_get(f"/v1/transactions/{sold.id}/trace", headers=auth(login(client, stranger["email"])))
    assert auditor.status_code == 200 and auditor.json["steps"] == seller.json["steps"]
    unknown = client.simulate_get(f"/v1/transactions/{uuid.uuid4()}/trace", headers=auth(sold.seller["session"]))
    assert (unknown.status_code, unknown.json["code"]) == (404, "purchase_not_found")
    device = client.simulate_get(f"/v1/transactions/{sold.id}/trace",
                                 headers=auth(device_jwt(sold.node.key, sold.node.device_id, int(time.time()))))
    assert device.status_code == 403
    assert client.simulate_get(f"/v1/transactions/{sold.id}/trace").status_code == 401
    bad = client.simulate_get("/v1/transactions/not-a-uuid/trace", headers=auth(sold.seller["session"]))
    assert (bad.status_code, bad.json["code"]) == (422, "invalid_input")
