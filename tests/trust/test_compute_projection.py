"""Trust's compute input through the projection (SQLite and PostgreSQL, freezegun): captured
sessions with a countersignature raise it, lapsed sessions and refused final reports lower it,
self-dealing weighs nothing, a safety rejection costs the seller nothing, a rebuild is identical."""

from __future__ import annotations

import uuid
from datetime import timedelta

from freezegun import freeze_time

from domain.model.invocation import Invocation
from domain.model.traces import Signal, Trace
from ops.bootstrap import make_runner
from projections.trust import TrustProjection
from tests.trust.test_projection import META, T0, device_trust, enroll


def opened(runtime, device_id: str, buyer: str, *, seller: str = "seller", budget_minor: int = 5000) -> Invocation:
    invocation = Invocation(
        id=uuid.uuid4(), meta=META, buyer_account_id=buyer, seller_account_id=seller, seller_device_id=device_id,
        listing_id=str(uuid.uuid4()), listing_version=1, channel_id=str(uuid.uuid4()), unit="calls",
        unit_price_minor=10, currency="USD", budget_minor=budget_minor, max_call_units=1, max_concurrency=1,
        idempotency_key="k", request_hash="h", token="t", kid="k", jti=uuid.uuid4().hex, cnf_jkt="j",
        issued_at_s=0, start_by_s=60, expires_at_s=600, lapse_at_s=1000)
    runtime.market.save(invocation)
    return invocation


def captured(runtime, invocation: Invocation, *, countersigned_minor: int = 50) -> None:
    invocation._captured(meta=META, receipt="r", seq=5, final_cumulative_minor=50, cumulative_units=5,
                         countersigned_minor=countersigned_minor, captured_minor=50, released_minor=4950,
                         fee_minor=3, end_reason="closed")
    runtime.market.save(invocation)


def lapsed(runtime, invocation: Invocation) -> None:
    invocation._lapsed(meta=META, at_s=1000)
    runtime.market.save(invocation)


def refused_report(runtime, device_id: str, invocation: Invocation, seq: int) -> None:
    body = {"jti": invocation.jti, "invocation_id": str(invocation.id), "receipt": {}, "countersignature": None}
    envelope = {"credentialSubject": {"entry": {"kind": "invoke_final", "body": body}}}
    runtime.market.save(Trace(id=uuid.uuid4(), meta=META, device_id=device_id, seq=seq, kind="invoke_final",
                              entry_hash=f"h{seq}", prev_hash="p", created_ms=0, body_digest="d", sent_ms=0,
                              nonce=str(seq), kid="k1", envelope=envelope, effect="refused",
                              effect_code="invoke_receipt_tampered"))


def compute(runtime, device_id: str) -> dict:
    return device_trust(runtime, device_id)["components"]["compute"]


def test_captured_sessions_raise_compute_and_self_dealing_weighs_nothing(runtime) -> None:
    with freeze_time(T0) as clock:
        seller = enroll(runtime, "seller")
        assert compute(runtime, seller)["score"] == 0.5
        for n in range(3):
            clock.move_to(T0 + timedelta(minutes=n + 1))
            captured(runtime, opened(runtime, seller, f"buyer-{n}"))
        for _ in range(5):  # the seller invoking its own listing
            captured(runtime, opened(runtime, seller, "seller"))
        captured(runtime, opened(runtime, seller, "buyer-9"), countersigned_minor=0)  # accepted nothing
        opened(runtime, seller, "buyer-8")  # in flight
        result = compute(runtime, seller)
    assert result["score"] > 0.7 and result["negative"] == 0 and result["buyers"] == 3
    reasons = sorted(s["reason"] for s in result["sessions"])
    assert reasons == ["", "", "", "not_countersigned", *["same_account"] * 5]


def test_lapsed_sessions_and_refused_reports_lower_it_and_a_rebuild_is_identical(runtime) -> None:
    with freeze_time(T0) as clock:
        seller, other = enroll(runtime, "seller"), enroll(runtime, "other")
        lapsed(runtime, opened(runtime, seller, "buyer-1"))
        refused = opened(runtime, seller, "buyer-2")
        refused_report(runtime, other, refused, 1)  # another device's report of it: not the seller's doing
        refused_report(runtime, seller, refused, 1)
        lapsed(runtime, refused)  # decided already: counts once
        clock.move_to(T0 + timedelta(minutes=2))
        runtime.market.save(Signal.make(uuid.uuid4(), META, device_id=seller, kind="invoke_rejection",
                                        code="invoke_input_rejected", at_ms=0, subject={"buyer_jkt": "j"}))
        device = device_trust(runtime, seller)
    result = device["components"]["compute"]
    assert result["score"] < 0.5 and result["positive"] == 0
    assert sorted((s["outcome"], s["weight"] > 0) for s in result["sessions"]) == [("lapsed", True),
                                                                                   ("refused", True)]
    assert device["components"]["behaviour"]["negative"] == 0  # a safety rejection is about the buyer
    runner = make_runner(runtime, TrustProjection())
    before = runtime.views.fetchall("SELECT * FROM trust_scores ORDER BY subject")
    runner.rebuild()
    assert runtime.views.fetchall("SELECT * FROM trust_scores ORDER BY subject") == before
