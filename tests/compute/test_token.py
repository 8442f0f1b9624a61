"""The invoke token: issued and verified by the same pure code on the hub, the node and the buyer."""

from __future__ import annotations

import pytest

from domain.model.delivery import issue_delivery_token
from domain.model.errors import (
    InvokeCnfMismatch,
    InvokeStartDeadlinePassed,
    InvokeTokenExpired,
    InvokeTokenInvalid,
    InvokeTokenNotYetValid,
    InvokeTokenSignatureInvalid,
    InvokeUnknownClaim,
    InvokeUnknownKid,
    InvokeWrongAudience,
    InvokeWrongTyp,
)
from domain.model.invoke import stored_claims, verify_invoke_token
from domain.model.jcs import canonical_json
from domain.model.keys import SigningKey, b64url
from tests.compute.parties import DEVICE_ID, NOW_S, Parties


@pytest.fixture
def parties() -> Parties:
    return Parties()


def test_a_token_verifies_and_its_claims_are_typed(parties: Parties) -> None:
    claims = parties.verified()
    assert claims.unit == "calls" and claims.unit_price_minor == 7 and claims.budget_minor == 100
    assert claims.call_max_minor == 7 and claims.seller_key == parties.device.verify_key
    claims.check_buyer_key(parties.buyer.verify_key)
    with pytest.raises(InvokeCnfMismatch):
        claims.check_buyer_key(SigningKey.generate().verify_key)
    header = parties.token().split(".")[0]
    assert header == b64url(canonical_json({"alg": "EdDSA", "typ": "aimarket-invoke+jwt", "kid": parties.hub.key_id}))
    assert parties.token() == parties.token()  # deterministic issuance


def _raw(parties: Parties, header: dict, claims: dict) -> str:
    text = f"{b64url(canonical_json(header))}.{b64url(canonical_json(claims))}"
    return f"{text}.{b64url(parties.hub.sign(text.encode()))}"


@pytest.mark.parametrize(("case", "error"), [
    ("expired", InvokeTokenExpired), ("not_yet_valid", InvokeTokenNotYetValid),
    ("start_passed", InvokeStartDeadlinePassed), ("audience", InvokeWrongAudience),
    ("signature", InvokeTokenSignatureInvalid), ("kid", InvokeUnknownKid), ("typ", InvokeWrongTyp),
    ("claim", InvokeUnknownClaim), ("header", InvokeUnknownClaim), ("delivery_token", InvokeWrongTyp),
    ("garbage", InvokeTokenInvalid), ("duplicate", InvokeTokenInvalid),
])
def test_each_refusal_has_its_own_code(parties: Parties, case: str, error: type) -> None:
    token, now, audience = parties.token(), NOW_S, DEVICE_ID
    head = {"alg": "EdDSA", "typ": "aimarket-invoke+jwt", "kid": parties.hub.key_id}
    if case == "expired":
        now = NOW_S + 3600 + 30
    elif case == "not_yet_valid":
        token = parties.token(nbf=NOW_S + 60)
    elif case == "start_passed":
        now = NOW_S + 331
    elif case == "audience":
        audience = "another-device"
    elif case == "signature":
        h, p, s = token.split(".")
        token = f"{h}.{p}.{s[:-2]}{'AA' if s[-2:] != 'AA' else 'BA'}"
    elif case == "kid":
        token = _raw(parties, {**head, "kid": "ed25519:0000000000000000"}, parties.claims())
    elif case == "typ":
        token = _raw(parties, {**head, "typ": "JWT"}, parties.claims())
    elif case == "claim":
        token = _raw(parties, head, {**parties.claims(), "scope": "all"})
    elif case == "header":
        token = _raw(parties, {**head, "jku": "https://evil.example"}, parties.claims())
    elif case == "delivery_token":
        from tests.delivery.make_vectors import blocks_vector
        from tests.delivery.make_vectors import claims as delivery_claims

        token = issue_delivery_token(delivery_claims(blocks_vector()), parties.hub, parties.hub.key_id)
    elif case == "garbage":
        token = "not.a.token"
    elif case == "duplicate":
        text = f"{b64url(canonical_json(head))}." + b64url(b'{"iss":"a","iss":"b"}')
        token = f"{text}.{b64url(parties.hub.sign(text.encode()))}"
    with pytest.raises(error) as caught:
        verify_invoke_token(token, parties.hub_keys, audience=audience, now_s=now)
    assert caught.value.code == error.code


@pytest.mark.parametrize("override", [
    {"unit": "lines"}, {"currency": "XYZ"}, {"unit_price_minor": -1}, {"budget_minor": 0},
    {"max_concurrency": 65}, {"max_call_units": 0}, {"exp": NOW_S + 8 * 86400}, {"jti": "short"},
    {"listing_id": "not-a-uuid"}, {"cnf": {"jkt": "x"}}, {"unit_price_minor": True},
    {"unit_price_minor": 2**40, "max_call_units": 2**31}, {"iss": "hub\n"},
])
def test_malformed_claims_are_refused_before_signing(parties: Parties, override: dict) -> None:
    with pytest.raises(InvokeTokenInvalid):
        parties.token(**override)


def test_a_resumed_session_skips_the_start_deadline_and_stored_tokens_read_back(parties: Parties) -> None:
    token = parties.token()
    late = verify_invoke_token(token, parties.hub_keys, audience=DEVICE_ID, now_s=NOW_S + 1000, require_start=False)
    with pytest.raises(InvokeStartDeadlinePassed):
        late.check_start(NOW_S + 1000)
    assert stored_claims(token).raw == late.raw  # the node reads its own bound tokens back, whatever the keys
