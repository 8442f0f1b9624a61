"""A compute invocation is a transaction too: opened over HTTP (its trace-id is its id), bound
and captured through the seller's trace batch (which carries that trace), read back step by step
from ``GET /v1/transactions/{id}/trace``, and shown captured on the live page (PostgreSQL)."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

from domain.model.delivery import jwk_thumbprint
from domain.model.keys import SigningKey
from node.delivery.trace_context import batch_traceparent
from tests.helpers import auth, device_jwt, login, register
from tests.invocations.conftest import market_runtime, mkt, store  # noqa: F401 - H4a's fixtures
from tests.invocations.session import Market
from tests.observability.test_transaction_trace import BUYER_TRACE
from tests.traces.helpers import SimNode


def test_an_invocation_is_one_trace_from_open_to_capture(mkt: Market) -> None:  # noqa: F811
    seller = mkt.seller()
    listing_id = mkt.compute_listing(seller)
    buyer, key = mkt.buyer(10_000), SigningKey.generate()
    r = mkt.client.simulate_post("/v1/invocations", json={
        "listing_id": listing_id, "channel_id": buyer["channel_id"], "budget_minor": 700,
        "buyer_jkt": jwk_thumbprint(key.verify_key)},
        headers={**buyer["headers"], "Idempotency-Key": uuid.uuid4().hex, "traceparent": BUYER_TRACE})
    assert r.status_code == 201, r.json
    invocation_hex = uuid.UUID(r.json["id"]).hex
    assert r.headers["traceparent"].split("-")[1] == invocation_hex
    session = SimpleNamespace(buyer=buyer, seller=seller, buyer_key=key, answer=r.json, id=r.json["id"],
                              claims=mkt.verify(r.json["invoke_token"], seller["id"]))
    claims = session.claims
    node = SimNode(seller["id"], seller["key"])
    bound = node.append("invoke_bound", {"jti": claims.jti, "invocation_id": session.id,
                                         "listing_id": claims.listing_id, "device_id": claims.aud,
                                         "jkt": claims.cnf_jkt, "bound_at_ms": claims.iat * 1000})
    final = node.append("invoke_final", mkt.final_body(session, 40, countersigned_units=40))
    header = batch_traceparent([bound, final])
    assert header is not None and header.split("-")[1] == invocation_hex
    posted = mkt.client.simulate_post(
        "/v1/traces", json={"envelopes": [node.envelope(bound), node.envelope(final)]},
        headers={**auth(device_jwt(node.key, node.device_id, int(time.time()))), "traceparent": header})
    assert posted.status_code == 200 and [x["effect"] for x in posted.json["results"]] == ["applied", "applied"]

    trace = mkt.client.simulate_get(f"/v1/transactions/{session.id}/trace", headers=buyer["headers"])
    assert trace.status_code == 200, trace.json
    body = trace.json
    assert (body["kind"], body["trace_id"]) == ("invocation", invocation_hex)
    steps = [s["step"] for s in body["steps"]]
    assert steps[0] == "opened" and "bound" in steps and "captured" in steps
    assert all(s["traceparent"].split("-")[1] == invocation_hex for s in body["steps"])
    assert body["steps"][0]["trace_link"] == BUYER_TRACE
    captured = next(s for s in body["steps"] if s["step"] == "captured")
    assert captured["parent_span_id"] == header.split("-")[2]
    assert captured["reported_by"]["kind"] == "invoke_final" and captured["details"]["cumulative_units"] == 40
    assert body["durations_ms"]["open_to_capture_ms"] >= 0
    assert r.json["invoke_token"] not in trace.text
    # others: the same 404 as an unknown id
    stranger = register(mkt.client, roles=["buyer"])
    other = mkt.client.simulate_get(f"/v1/transactions/{session.id}/trace",
                                    headers=auth(login(mkt.client, stranger["email"])))
    assert (other.status_code, other.json["code"]) == (404, "purchase_not_found")
    # the live page shows the capture to the buyer and the seller
    for headers in (buyer["headers"], seller["headers"]):
        items = mkt.client.simulate_get("/v1/stats/live", params={"after": "0"}, headers=headers).json["items"]
        (item,) = [i for i in items if i["kind"] == "invocation"]
        assert (item["invocation_id"], item["cumulative_units"], item["currency"]) == (session.id, 40, "USD")
