"""The compute kinds through trace intake with the real ``market.invocations`` on PostgreSQL: a
tampered final receipt, one with a changed unit price and a replayed one are each recorded
``effect: refused`` with their own code (and a signal), nothing is captured for them; a good
final report captures once; a binding and a rejection are applied."""

from __future__ import annotations

import copy
from typing import Any

from domain.app.traces import TraceService
from domain.model.base import Meta
from domain.model.invoke_receipts import issue_rejection
from domain.model.keys import SigningKey
from domain.model.principal import Principal
from tests.invocations.conftest import market_runtime, mkt, store  # noqa: F401 - H4a's fixtures
from tests.invocations.session import Market, Session
from tests.traces.helpers import SIGNAL, SimNode, events


def node_of(session: Session) -> SimNode:
    return SimNode(session.seller["id"], session.seller["key"])


def take(service: TraceService, node: SimNode, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    principal = Principal("device", "", ("seller",), device_id=node.device_id)
    entry = node.append(kind, body)
    return service.intake(Meta(f"device:{node.device_id}", "t").as_dict(), principal,
                          [node.envelope(entry)])["results"][0]


def bound_body(session: Session, at_ms: int) -> dict[str, Any]:
    claims = session.claims
    return {"jti": claims.jti, "invocation_id": session.id, "listing_id": claims.listing_id,
            "device_id": claims.aud, "jkt": claims.cnf_jkt, "bound_at_ms": at_ms}


def same_seller_session(market: Market, s: Session) -> Session:
    """Another buyer's session of the same listing (so the same seller key signs its receipts)."""
    buyer, key = market.buyer(10_000), SigningKey.generate()
    r = market.open(buyer, s.claims.listing_id, budget_minor=700, buyer_key=key)
    assert r.status_code == 201, r.json
    return Session(buyer, s.seller, key, r.json, market.verify(r.json["invoke_token"], s.seller["id"]))


def test_tampered_changed_price_and_replayed_final_receipts_are_refused_with_distinct_codes(mkt: Market) -> None:  # noqa: F811
    s = mkt.session(budget_minor=700)
    other = same_seller_session(mkt, s)
    service, node = TraceService(mkt.market), node_of(s)
    assert take(service, node, "invoke_bound", bound_body(s, s.claims.iat * 1000))["effect"] == "applied"

    tampered = mkt.final_body(s, 40, countersigned_units=40)
    tampered["receipt"] = copy.deepcopy(tampered["receipt"])
    tampered["receipt"]["credentialSubject"]["ended_ms"] += 1  # any signed field, changed after signing
    price = mkt.final_body(s, 3, countersigned_units=None, unit_price_minor=8, cumulative_amount_minor=24)
    foreign = mkt.final_body(other, 3, countersigned_units=3)  # the seller's receipt of another session, replayed
    foreign["jti"], foreign["invocation_id"] = s.claims.jti, s.id
    codes = [take(service, node, "invoke_final", body) for body in (tampered, price, foreign)]
    assert [(r["status"], r["effect"], r["code"]) for r in codes] == [
        ("recorded", "refused", "invoke_receipt_tampered"), ("recorded", "refused", "invoke_unit_price_changed"),
        ("recorded", "refused", "invoke_receipt_replayed")]
    assert mkt.channel(s.buyer)["held_minor"] == 700  # nothing captured

    good = take(service, node, "invoke_final", mkt.final_body(s, 40, countersigned_units=40))
    assert good["effect"] == "applied"
    assert (mkt.channel(s.buyer)["spent_minor"], mkt.channel(s.buyer)["held_minor"]) == (280, 0)
    again = mkt.final_body(s, 41, countersigned_units=40)  # a second, different final after the capture
    assert take(service, node, "invoke_final", again)["code"] == "invoke_receipt_replayed"
    assert mkt.channel(s.buyer)["spent_minor"] == 280  # billed once
    signals = [(sig.kind, sig.code) for sig in events(mkt.market, SIGNAL)]
    assert signals == [("invoke_final", "invoke_receipt_tampered"), ("invoke_final", "invoke_unit_price_changed"),
                       ("invoke_final", "invoke_receipt_replayed"), ("invoke_final", "invoke_receipt_replayed")]


def test_a_rejection_is_recorded_on_the_invocation_and_signalled_about_the_buyer(mkt: Market) -> None:  # noqa: F811
    s = mkt.session(budget_minor=700)
    claims = s.claims
    rejection = issue_rejection({"invocation_id": claims.sub, "jti": claims.jti, "device_id": claims.aud,
                                 "listing_id": claims.listing_id, "buyer_jkt": claims.cnf_jkt, "connection": "A" * 43,
                                 "call": 1, "rule": "builtin:deny_patterns", "code": "invoke_input_rejected",
                                 "detail": "a deny pattern matched", "input_hash": None, "amount_minor": 0,
                                 "at_ms": claims.iat * 1000}, s.seller["key"], now_ms=claims.iat * 1000,
                                nonce="rejection-nonce-0001")
    result = take(TraceService(mkt.market), node_of(s), "invoke_rejection", {"rejection": rejection})
    assert (result["effect"], result["code"]) == ("applied", "invoke_input_rejected")
    view = mkt.client.simulate_get(f"/v1/invocations/{s.id}", headers=s.buyer["headers"]).json
    assert view["rejections"] == 1 and view["captured_minor"] == 0
    [signal] = events(mkt.market, SIGNAL)
    assert (signal.kind, signal.subject["buyer_jkt"]) == ("invoke_rejection", claims.cnf_jkt)


def test_audit_verify_checks_the_compute_receipt_countersignature_and_capture(mkt: Market) -> None:  # noqa: F811
    """``audit verify`` verifies the final receipt (device key) and the countersignature (the
    token's cnf key) in the trace that carried them, and the capture holds the digest of one;
    a refused trace's lying receipt is the hub's refusal, not a violation of the log."""
    from ops.audit import verify_log

    s = mkt.session(budget_minor=700)
    service, node = TraceService(mkt.market), node_of(s)
    take(service, node, "invoke_bound", bound_body(s, s.claims.iat * 1000))
    tampered = mkt.final_body(s, 40, countersigned_units=40)
    tampered["receipt"] = copy.deepcopy(tampered["receipt"])
    tampered["receipt"]["credentialSubject"]["ended_ms"] += 1
    assert take(service, node, "invoke_final", tampered)["effect"] == "refused"
    assert take(service, node, "invoke_final", mkt.final_body(s, 40, countersigned_units=40))["effect"] == "applied"
    report = verify_log(mkt.market)
    assert report["signatures"]["ok"], report["signatures"]
    checked = report["signatures"]["checked"]
    assert checked.get("compute receipt in trace") == 1 and checked.get("countersignature in trace") == 1, checked
    assert report["signatures"]["not_checked"].get("invoke_final the hub refused") == 1
