"""W3C ``traceparent``: parsed strictly (an invalid one starts a new trace, never an error),
answered on every response, recorded in every event's meta; a purchase's trace-id is its id
(the buyer's own trace kept as ``trace_link``); the node's one-purchase batches carry it."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from api.tracing import parse
from node.delivery.trace_context import batch_traceparent
from tests.traces.helpers import events

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
REGISTERED = "domain.model.account:Account.Registered"


@pytest.mark.parametrize("header", [
    CALLER,
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future-fields",  # a later version may add fields
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
])
def test_valid_headers_are_read(header: str) -> None:
    assert parse(header) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", header[53:55])


@pytest.mark.parametrize("header", [
    None, "", "garbage", CALLER.upper(), CALLER + "-extra",  # version 00 is exactly 55 characters
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is forbidden
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace-id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent-id
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # a digit short
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
    "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # a later version: a dash after the flags
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
    "x" * 600,
])
def test_invalid_headers_are_not_read(header: str | None) -> None:
    assert parse(header) is None


def _trace(response) -> list[str]:
    return response.headers["traceparent"].split("-")


def test_the_callers_trace_is_continued_and_a_new_one_started_otherwise(client) -> None:
    r = client.simulate_get("/healthz", headers={"traceparent": CALLER})
    version, trace_id, span_id, flags = _trace(r)
    assert (r.status_code, version, trace_id, flags) == (200, "00", CALLER[3:35], "01")
    assert span_id != CALLER[36:52] and len(span_id) == 16 and span_id != "0" * 16
    for bad in ("ff-" + CALLER[3:], CALLER.upper(), "00-" + "0" * 32 + CALLER[35:], "\u00e9t\u00e9"):
        r = client.simulate_get("/healthz", headers={"traceparent": bad.encode("utf-8").decode("latin-1")})
        assert r.status_code == 200
        _, trace_id, span_id, flags = _trace(r)
        assert trace_id != CALLER[3:35] and len(trace_id) == 32 and int(trace_id, 16) and flags == "01"
    first, second = _trace(client.simulate_get("/healthz")), _trace(client.simulate_get("/healthz"))
    assert first[1] != second[1] and first[2] != second[2]


def test_a_problem_answer_carries_the_trace_too(client) -> None:
    r = client.simulate_get("/v1/me", headers={"traceparent": CALLER})
    assert r.status_code == 401 and _trace(r)[1] == CALLER[3:35]


def test_events_record_the_requests_traceparent(client, runtime) -> None:
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    r = client.simulate_post("/v1/accounts", json={"email": email, "password": "a long passphrase", "roles": ["buyer"]},
                             headers={"traceparent": CALLER})
    assert r.status_code == 201
    (registered,) = [e for e in events(runtime.market, REGISTERED) if str(e.originator_id) == r.json["id"]]
    assert registered.meta["traceparent"] == r.headers["traceparent"]
    assert registered.meta["traceparent"].split("-")[1] == CALLER[3:35] and "trace_link" not in registered.meta


def test_a_purchase_is_its_own_trace_and_keeps_the_buyers_as_a_link(shop) -> None:
    seller = shop.seller()
    listing_id = shop.listing(seller)
    buyer = shop.buyer()
    body = _buy_body(buyer, listing_id)
    r = shop.client.simulate_post("/v1/purchases", json=body,
                                  headers={**buyer["headers"], "Idempotency-Key": "trace-1", "traceparent": CALLER})
    assert r.status_code == 201, r.json
    purchase_hex = uuid.UUID(r.json["id"]).hex
    assert _trace(r)[1] == purchase_hex
    market = shop.market
    (purchased,) = [e for e in events(market, "domain.model.purchase:Purchase.Purchased")
                    if str(e.originator_id) == r.json["id"]]
    assert purchased.meta["traceparent"] == r.headers["traceparent"]
    assert purchased.meta["trace_link"] == CALLER[:36] + CALLER[36:52] + "-01"
    debits = [e for e in events(market, "domain.model.channel:Channel.Debited")
              if e.purpose == f"purchase {r.json['id']}"]
    assert [d.meta["traceparent"].split("-")[1] for d in debits] == [purchase_hex]
    # a retry under the same key lands on the same purchase and the same trace
    again = shop.client.simulate_post("/v1/purchases", json=body,
                                      headers={**buyer["headers"], "Idempotency-Key": "trace-1"})
    assert again.json["id"] == r.json["id"] and _trace(again)[1] == purchase_hex
    # reading or revoking it answers on its trace
    seen = shop.client.simulate_get(f"/v1/purchases/{r.json['id']}", headers=buyer["headers"])
    assert _trace(seen)[1] == purchase_hex


def _buy_body(buyer: dict, listing_id: str) -> dict:
    from domain.model.delivery import jwk_thumbprint
    from domain.model.keys import SigningKey

    return {"listing_id": listing_id, "channel_id": buyer["channel_id"],
            "buyer_jkt": jwk_thumbprint(SigningKey.generate().verify_key)}


def _entry(kind: str, body: dict) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, body=body, seq=1)


def test_the_node_names_the_purchase_of_a_one_purchase_batch() -> None:
    purchase = str(uuid.uuid4())
    one = [_entry("redemption", {"purchase_id": purchase}),
           _entry("receipt", {"credentialSubject": {"purchase_id": purchase}}),
           _entry("confirmation", {"credentialSubject": {"purchase_id": purchase}})]
    header = batch_traceparent(one)
    assert header is not None and parse(header)[0] == uuid.UUID(purchase).hex and header.endswith("-01")
    assert batch_traceparent(one) != header  # a new span each send
    mixed = [*one, _entry("redemption", {"purchase_id": str(uuid.uuid4())})]
    assert batch_traceparent(mixed) is None
    assert batch_traceparent([*one, _entry("heartbeat", {"uptime_s": 1})]) is None
    assert batch_traceparent([_entry("redemption", {"purchase_id": "not a uuid"})]) is None
    assert batch_traceparent([]) is None
