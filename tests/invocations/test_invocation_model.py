"""The Invocation aggregate, pure: the final receipt is verified against the token it holds, the
capture is capped, each lie has its own code, rejections cost nothing, a lapse ends it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from domain.model.base import Meta
from domain.model.errors import MarketError
from domain.model.invocation import Invocation, invocation_id_for
from domain.model.invoke import stored_claims
from domain.model.invoke_receipts import issue_countersignature, issue_receipt, issue_rejection
from domain.model.keys import SigningKey
from tests.compute.parties import CONNECTION, DEVICE_ID, LISTING_ID, NOW_S, SRI, Parties, subject

META = Meta.system("test").as_dict()
PRICE, BUDGET = 7, 100


def opened(parties: Parties, **claims: Any) -> Invocation:
    invocation_id = invocation_id_for("buyer-1", uuid.uuid4().hex)
    token = parties.token(sub=str(invocation_id), unit_price_minor=PRICE, budget_minor=BUDGET, **claims)
    c = stored_claims(token)
    return Invocation(id=invocation_id, meta=META, buyer_account_id="buyer-1", seller_account_id="seller-1",
                      seller_device_id=DEVICE_ID, listing_id=LISTING_ID, listing_version=3, channel_id="ch",
                      unit="calls", unit_price_minor=PRICE, currency="USD", budget_minor=BUDGET,
                      max_call_units=1, max_concurrency=c.max_concurrency, idempotency_key="k", request_hash="h",
                      token=token, kid=parties.hub.key_id, jti=c.jti, cnf_jkt=c.cnf_jkt, issued_at_s=NOW_S,
                      start_by_s=c.start_by, expires_at_s=c.exp, lapse_at_s=c.exp + 86400)


def final(parties: Parties, inv: Invocation, cumulative_units: int, *, key: SigningKey | None = None,
          **overrides: Any) -> dict[str, Any]:
    s = subject(inv.claims(), cumulative_units + 1, cumulative_units=cumulative_units, outcome="final", **overrides)
    return issue_receipt(s, key or parties.device, now_ms=NOW_S * 1000, nonce="final-receipt-nonce-01")


def countersigned(parties: Parties, inv: Invocation, cumulative_units: int) -> dict[str, Any]:
    s = subject(inv.claims(), cumulative_units, cumulative_units=cumulative_units)
    receipt = issue_receipt(s, parties.device, now_ms=NOW_S * 1000, nonce="call-receipt-nonce-01")
    return issue_countersignature(receipt, parties.buyer, now_ms=NOW_S * 1000, nonce="countersign-nonce-01")


def code_of(call: Any) -> str:
    with pytest.raises(MarketError) as exc:
        call()
    return exc.value.code


def test_a_countersigned_final_is_captured_whole_with_the_fee_and_the_rest_released() -> None:
    p = Parties()
    inv = opened(p)
    split = inv.record_final(META, final(p, inv, 5), countersigned(p, inv, 5), device_key=p.device.verify_key,
                             fee_of=lambda amount: amount * 500 // 10_000)
    assert (split.captured_minor, split.released_minor) == (35, 65)
    view = inv.to_public()
    assert view["status"] == "captured" and (view["captured_minor"], view["fee_minor"]) == (35, 1)
    assert inv.record_final(META, final(p, inv, 5), None, device_key=p.device.verify_key) is None  # duplicate


def test_an_uncountersigned_tail_is_capped_at_concurrency_calls() -> None:
    p = Parties()
    inv = opened(p)  # max_concurrency 2, one call at most 7
    split = inv.record_final(META, final(p, inv, 10), countersigned(p, inv, 2), device_key=p.device.verify_key)
    assert split.captured_minor == 2 * PRICE + 2 * PRICE and split.released_minor == BUDGET - 28
    inv2 = opened(p)
    assert inv2.record_final(META, final(p, inv2, 10), None, device_key=p.device.verify_key).captured_minor == 14


def test_each_lie_has_its_own_code() -> None:
    p = Parties()
    inv = opened(p)
    tampered = final(p, inv, 3)
    tampered["credentialSubject"]["cumulative_units"] = 4
    tampered["credentialSubject"]["cumulative_amount_minor"] = 28
    assert code_of(lambda: inv.record_final(META, tampered, None, device_key=p.device.verify_key)) \
        == "invoke_receipt_tampered"
    other_key = final(p, inv, 3, key=SigningKey.generate())
    assert code_of(lambda: inv.record_final(META, other_key, None, device_key=p.device.verify_key)) \
        == "invoke_receipt_tampered"
    repriced = final(p, inv, 3, unit_price_minor=9, cumulative_amount_minor=27)
    assert code_of(lambda: inv.record_final(META, repriced, None, device_key=p.device.verify_key)) \
        == "invoke_unit_price_changed"
    other = opened(p)
    replayed = final(p, other, 3)  # another session's final receipt
    assert code_of(lambda: inv.record_final(META, replayed, None, device_key=p.device.verify_key)) \
        == "invoke_receipt_replayed"
    not_final = issue_receipt(subject(inv.claims(), 2, cumulative_units=2), p.device, now_ms=NOW_S * 1000,
                              nonce="call-receipt-nonce-02")
    assert code_of(lambda: inv.record_final(META, not_final, None, device_key=p.device.verify_key)) \
        == "invoke_receipt_invalid"
    assert inv.status == "open" and inv.collect_events()[1:] == []  # nothing recorded
    inv.record_final(META, final(p, inv, 3), None, device_key=p.device.verify_key)
    assert code_of(lambda: inv.record_final(META, final(p, inv, 4), None, device_key=p.device.verify_key)) \
        == "invoke_receipt_replayed"  # another final after the capture


def test_a_countersignature_by_another_key_or_ahead_of_the_final_is_refused() -> None:
    p = Parties()
    inv = opened(p)
    ahead = countersigned(p, inv, 6)
    assert code_of(lambda: inv.record_final(META, final(p, inv, 5), ahead, device_key=p.device.verify_key)) \
        == "invoke_countersignature_invalid"
    forged = issue_countersignature(final(p, inv, 5), SigningKey.generate(), now_ms=NOW_S * 1000,
                                    nonce="countersign-nonce-02")
    assert code_of(lambda: inv.record_final(META, final(p, inv, 5), forged, device_key=p.device.verify_key)) \
        == "invoke_countersignature_invalid"


def test_a_rejection_is_recorded_once_and_costs_nothing() -> None:
    p = Parties()
    inv = opened(p)
    c = inv.claims()
    rejection = issue_rejection({"invocation_id": c.sub, "jti": c.jti, "device_id": c.aud, "listing_id": LISTING_ID,
                                 "buyer_jkt": c.cnf_jkt, "connection": CONNECTION, "call": 1,
                                 "rule": "builtin:deny_patterns", "code": "invoke_input_rejected",
                                 "detail": "prompt-injection marker", "input_hash": SRI, "amount_minor": 0,
                                 "at_ms": NOW_S * 1000}, p.device, now_ms=NOW_S * 1000, nonce="rejection-nonce-001")
    assert inv.record_rejection(META, rejection, device_key=p.device.verify_key) is True
    assert inv.record_rejection(META, rejection, device_key=p.device.verify_key) is False
    view = inv.to_public()
    assert view["rejections"] == 1 and view["captured_minor"] == 0 and view["status"] == "open"


def test_binding_is_checked_and_idempotent() -> None:
    p = Parties()
    inv = opened(p)
    assert code_of(lambda: inv.record_bound(META, jti=inv.jti, device_id=DEVICE_ID, buyer_jkt="x" * 43,
                                            bound_at_ms=1)) == "redemption_key_mismatch"
    assert code_of(lambda: inv.record_bound(META, jti="another-token-0000001", device_id=DEVICE_ID,
                                            buyer_jkt=inv.cnf_jkt, bound_at_ms=1)) == "redemption_wrong_token"
    assert inv.record_bound(META, jti=inv.jti, device_id=DEVICE_ID, buyer_jkt=inv.cnf_jkt, bound_at_ms=5) is True
    assert inv.record_bound(META, jti=inv.jti, device_id=DEVICE_ID, buyer_jkt=inv.cnf_jkt, bound_at_ms=6) is False
    assert inv.status == "bound" and inv.to_public()["token"]["bound_at_ms"] == 5


def test_a_lapse_comes_only_after_the_grace_and_refuses_a_late_final() -> None:
    p = Parties()
    inv = opened(p)
    assert inv.lapse(META, now_s=inv.lapse_at_s - 1) is False
    assert inv.lapse(META, now_s=inv.lapse_at_s) is True and inv.lapse(META, now_s=inv.lapse_at_s + 5) is False
    assert inv.to_public()["released_minor"] == BUDGET and inv.status == "lapsed"
    assert code_of(lambda: inv.record_final(META, final(p, inv, 1), None, device_key=p.device.verify_key)) \
        == "invalid_state"


def test_events_replay_to_the_same_state() -> None:
    p = Parties()
    inv = opened(p)
    inv.record_bound(META, jti=inv.jti, device_id=DEVICE_ID, buyer_jkt=inv.cnf_jkt, bound_at_ms=5)
    inv.record_final(META, final(p, inv, 2), countersigned(p, inv, 2), device_key=p.device.verify_key)
    rebuilt = None
    for e in inv.collect_events():
        rebuilt = e.mutate(rebuilt)
    assert rebuilt is not None and rebuilt.to_public() == inv.to_public()
