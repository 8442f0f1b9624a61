"""Receipts, countersignatures and rejections: exact eddsa-jcs-2022 VCs, one code per refusal, the money rules."""

from __future__ import annotations

import copy
import json
import os

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.model.errors import (
    BudgetExhausted,
    InvokeCountersignatureInvalid,
    InvokeCountersignatureRequired,
    InvokeOverBudget,
    InvokeReceiptInvalid,
    InvokeReceiptReplayed,
    InvokeReceiptTampered,
    InvokeUnitPriceChanged,
    MarketError,
)
from domain.model.invoke import admit_call, capped_amount_minor, settle
from domain.model.invoke_receipts import (
    decode,
    digest,
    encode,
    issue_countersignature,
    issue_rejection,
    jcs,
    signature_from_base58,
    verify_countersignature,
    verify_receipt,
    verify_rejection,
)
from domain.model.jcs import canonical_json
from domain.model.keys import SigningKey
from domain.model.vc import sign_credential, verify_credential
from tests.compute.parties import CONNECTION, NOW_S, SRI, Parties, receipt


@pytest.fixture
def parties() -> Parties:
    return Parties()


def test_receipts_are_standard_credentials_both_ways(parties: Parties) -> None:
    claims = parties.verified()
    made = receipt(parties, claims, 1, cumulative_units=1)
    verify_credential(made, expected_key=parties.device.verify_key)  # the general verifier accepts ours
    unsigned = {k: v for k, v in made.items() if k != "proof"}
    general = sign_credential(unsigned, parties.device, created=made["proof"]["created"],
                              nonce=made["proof"]["nonce"])
    assert general == made  # the fast path signs byte for byte what the general one does
    assert verify_receipt(general, claims)["seq"] == 1
    assert digest(made) == digest(json.loads(json.dumps(made)))
    assert encode(made) == canonical_json(made)


def _resign(parties: Parties, claims, seq: int, **changes) -> dict:
    return receipt(parties, claims, seq, **changes)


def test_a_tampered_receipt_is_refused_as_tampered(parties: Parties) -> None:
    claims = parties.verified()
    made = receipt(parties, claims, 1, cumulative_units=1)
    for path, value in ((("credentialSubject", "cumulative_units"), 0), (("credentialSubject", "output_hash"), None),
                        (("proof", "nonce"), "another-nonce-000001"), (("validFrom",), "2030-01-01T00:00:00Z")):
        bad = copy.deepcopy(made)
        target = bad
        for name in path[:-1]:
            target = target[name]
        target[path[-1]] = value
        if path[-1] in ("cumulative_units", "output_hash"):
            bad["credentialSubject"]["cumulative_amount_minor"] = bad["credentialSubject"]["cumulative_units"] * 7
        with pytest.raises(InvokeReceiptTampered):
            verify_receipt(bad, claims)
    stranger = receipt(parties, claims, 1, cumulative_units=1, key=SigningKey.generate())
    with pytest.raises(InvokeReceiptTampered):
        verify_receipt(stranger, claims)


def test_a_changed_unit_price_is_refused_as_such(parties: Parties) -> None:
    claims = parties.verified()
    dearer = _resign(parties, claims, 1, cumulative_units=1, unit_price_minor=8, amount_minor=8,
                     cumulative_amount_minor=8)
    with pytest.raises(InvokeUnitPriceChanged):
        verify_receipt(dearer, claims)
    with pytest.raises(InvokeUnitPriceChanged):
        verify_receipt(_resign(parties, claims, 1, cumulative_units=1, currency="EUR"), claims)


def test_a_replayed_receipt_is_refused_as_replayed(parties: Parties) -> None:
    claims = parties.verified()
    first = verify_receipt(receipt(parties, claims, 1, cumulative_units=1), claims)
    second = verify_receipt(receipt(parties, claims, 2, cumulative_units=2), claims, previous=first)
    for again in (receipt(parties, claims, 2, cumulative_units=2), receipt(parties, claims, 1, cumulative_units=1)):
        with pytest.raises(InvokeReceiptReplayed):
            verify_receipt(again, claims, previous=second)
    other_session = parties.verified(jti="invoke-token-000000002", sub="invocation-0002")
    with pytest.raises(InvokeReceiptReplayed):
        verify_receipt(receipt(parties, other_session, 3, cumulative_units=3), claims, previous=second)
    with pytest.raises(InvokeReceiptReplayed):
        verify_receipt(receipt(parties, claims, 3, cumulative_units=3), claims, previous=second,
                       connection="another-connection-id-0000000000000000000000")


def test_over_budget_and_arithmetic_have_their_codes(parties: Parties) -> None:
    claims = parties.verified(budget_minor=14)
    ok = verify_receipt(receipt(parties, claims, 2, cumulative_units=2), claims)
    assert ok["cumulative_amount_minor"] == 14
    with pytest.raises(InvokeOverBudget):
        verify_receipt(receipt(parties, claims, 3, cumulative_units=3), claims, previous=ok)
    with pytest.raises(InvokeReceiptInvalid) as caught:
        verify_receipt(receipt(parties, claims, 3, cumulative_units=2, units=1), claims, previous=ok)
    assert caught.value.code == "invoke_receipt_invalid"  # seq + 1 must add the call's units exactly
    for broken in ({"amount_minor": 6}, {"billed": False}, {"error": "invoke_call_failed"},
                   {"countersigned_seq": 2}, {"started_ms": NOW_S * 1000 + 10}):
        with pytest.raises(InvokeReceiptInvalid):
            receipt(parties, claims, 2, cumulative_units=2, **broken)


def test_unbilled_outcomes_count_nothing(parties: Parties) -> None:
    claims = parties.verified()
    for outcome in ("failed", "timeout", "cancelled"):
        s = verify_receipt(receipt(parties, claims, 1, cumulative_units=0, outcome=outcome), claims)
        assert (s["billed"], s["units"], s["amount_minor"], s["output_hash"]) == (False, 0, 0, None)
    with pytest.raises(InvokeReceiptInvalid):
        receipt(parties, claims, 1, cumulative_units=1, units=1, outcome="failed", amount_minor=7)


def test_countersignatures_bind_the_receipt_and_the_buyer_key(parties: Parties) -> None:
    claims = parties.verified()
    made = receipt(parties, claims, 1, cumulative_units=1)
    vc = issue_countersignature(made, parties.buyer, now_ms=NOW_S * 1000, nonce="countersig-nonce-01")
    verify_credential(vc)
    for key in (None, parties.buyer.verify_key):
        s = verify_countersignature(vc, claims, buyer_key=key)
        assert s["receipt"] == digest(made) and s["cumulative_amount_minor"] == 7
    forged = issue_countersignature(made, SigningKey.generate(), now_ms=NOW_S * 1000, nonce="countersig-nonce-02")
    with pytest.raises(InvokeCountersignatureInvalid):
        verify_countersignature(forged, claims)
    bad = copy.deepcopy(vc)
    bad["credentialSubject"]["cumulative_amount_minor"] = 700
    with pytest.raises(InvokeCountersignatureInvalid):
        verify_countersignature(bad, claims, buyer_key=parties.buyer.verify_key)


def test_rejections_are_signed_and_cost_nothing(parties: Parties) -> None:
    claims = parties.verified()
    subject_ = {"invocation_id": claims.sub, "jti": claims.jti, "device_id": claims.aud,
                "listing_id": claims.listing_id, "buyer_jkt": claims.cnf_jkt, "connection": CONNECTION, "call": 4,
                "rule": "builtin:deny_patterns", "code": "invoke_input_rejected", "detail": "prompt injection",
                "input_hash": SRI, "amount_minor": 0, "at_ms": NOW_S * 1000}
    vc = issue_rejection(subject_, parties.device, now_ms=NOW_S * 1000, nonce="rejection-nonce-001")
    verify_credential(vc)
    assert verify_rejection(vc, claims)["amount_minor"] == 0
    with pytest.raises(MarketError):
        issue_rejection({**subject_, "amount_minor": 1}, parties.device, now_ms=NOW_S * 1000,
                        nonce="rejection-nonce-002")


def test_admission_refuses_with_the_amount_needed() -> None:
    admit_call(budget_minor=21, billed_minor=7, in_flight_minor=7, countersigned_minor=7, call_max_minor=7,
               max_concurrency=2)
    with pytest.raises(BudgetExhausted) as caught:
        admit_call(budget_minor=20, billed_minor=7, in_flight_minor=7, countersigned_minor=7, call_max_minor=7,
                   max_concurrency=2)
    assert caught.value.status == 402 and caught.value.code == "budget_exhausted"
    assert caught.value.extra == {"amount_needed_minor": 7, "remaining_minor": 6, "shortfall_minor": 1}
    with pytest.raises(InvokeCountersignatureRequired):
        admit_call(budget_minor=1000, billed_minor=14, in_flight_minor=7, countersigned_minor=7, call_max_minor=7,
                   max_concurrency=2)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.integers(0, 50), st.integers(1, 10_000), st.lists(st.integers(0, 50), max_size=60),
       st.data())
def test_a_node_that_admits_by_the_rule_loses_nothing_to_the_cap(concurrency: int, price: int, budget: int,
                                                                  units: list[int], data: st.DataObject) -> None:
    """Run calls the way the node does (admit, then bill at most max_call_units), with the buyer
    countersigning at random moments: the capped amount always equals what was billed."""
    max_units = 50
    call_max = price * max_units
    billed = countersigned = 0
    in_flight: list[int] = []
    for u in units:
        if data.draw(st.booleans()):
            countersigned = billed
        if in_flight and data.draw(st.booleans()):
            in_flight.pop(0)
            billed += min(u, max_units) * price
        try:
            admit_call(budget_minor=budget, billed_minor=billed, in_flight_minor=len(in_flight) * call_max,
                       countersigned_minor=countersigned, call_max_minor=call_max, max_concurrency=concurrency)
        except (BudgetExhausted, InvokeCountersignatureRequired):
            continue
        in_flight.append(u)
    billed += sum(min(u, max_units) * price for u in in_flight)
    assert billed <= budget
    assert capped_amount_minor(final_cumulative_minor=billed, countersigned_minor=countersigned,
                               call_max_minor=call_max, max_concurrency=concurrency, budget_minor=budget) == billed


def test_settle_captures_the_capped_amount_and_releases_the_rest(parties: Parties) -> None:
    claims = parties.verified(budget_minor=100, max_concurrency=1)
    assert settle(claims, final_cumulative_minor=35, countersigned_minor=28).captured_minor == 35
    uncountersigned = settle(claims, final_cumulative_minor=35, countersigned_minor=14)
    assert (uncountersigned.captured_minor, uncountersigned.released_minor) == (21, 79)  # last countersigned + one call


simple = st.recursive(st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                      max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(simple)
def test_the_fast_jcs_is_rfc8785(value: object) -> None:
    try:
        expected = canonical_json(value)
    except MarketError:
        with pytest.raises(MarketError):
            jcs(value)
        return
    assert jcs(value) == expected
    assert decode(expected) == json.loads(expected)


def test_decode_refuses_duplicate_members_and_base58_is_canonical() -> None:
    with pytest.raises(MarketError):
        decode(b'{"a":1,"a":1}')
    for _ in range(200):
        raw = os.urandom(64) if _ % 4 else b"\0\0" + os.urandom(62)
        assert signature_from_base58(base58.b58encode(raw).decode()) == raw
    with pytest.raises(ValueError):
        signature_from_base58("1" + base58.b58encode(b"\1" * 64).decode())
