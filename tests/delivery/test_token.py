"""The delivery token: issue and verify with one code path (hub and node), each refusal its own."""

from __future__ import annotations

import pytest

from domain.model.delivery import (
    MAX_TOKEN_CHARS,
    check_claims,
    issue_delivery_token,
    json_depth,
    jwk_thumbprint,
    verify_delivery_token,
)
from domain.model.errors import MarketError
from domain.model.jcs import canonical_json
from domain.model.keys import SigningKey, b64url
from tests.delivery.make_vectors import BUYER, HUB, NOW_S, blocks_vector, claims

KEYS = {HUB.key_id: HUB.verify_key}
AUD = "3f1c2b9e-6d7a-5e4f-8a9b-0c1d2e3f4a5b"


def _claims(**overrides):
    return claims(blocks_vector(), **overrides)


def _code(token: str, **options) -> str:
    options = {"audience": AUD, "now_s": NOW_S, **options}
    with pytest.raises(MarketError) as caught:
        verify_delivery_token(token, KEYS, **options)
    return caught.value.code


def test_the_hub_and_the_node_agree_on_a_token() -> None:
    token = issue_delivery_token(_claims(), HUB, HUB.key_id)
    verified = verify_delivery_token(token, KEYS, audience=AUD, now_s=NOW_S + 10)
    assert verified.jti == "vector-token-000000001" and verified.blocks.count == 3
    verified.check_buyer_key(BUYER.verify_key)
    assert verified.cnf_jkt == jwk_thumbprint(BUYER.verify_key)
    with pytest.raises(MarketError) as caught:
        verified.check_buyer_key(SigningKey.generate().verify_key)
    assert caught.value.code == "delivery_cnf_mismatch"


def test_times_have_thirty_seconds_of_skew_and_resumes_may_pass_the_start_deadline() -> None:
    token = issue_delivery_token(_claims(), HUB, HUB.key_id)
    verify_delivery_token(token, KEYS, audience=AUD, now_s=NOW_S - 30)
    assert _code(token, now_s=NOW_S - 31) == "delivery_token_not_yet_valid"
    verify_delivery_token(token, KEYS, audience=AUD, now_s=NOW_S + 330)
    assert _code(token, now_s=NOW_S + 331) == "delivery_start_deadline_passed"
    resumed = verify_delivery_token(token, KEYS, audience=AUD, now_s=NOW_S + 3629, require_start=False)
    assert resumed.exp == NOW_S + 3600
    assert _code(token, now_s=NOW_S + 3630, require_start=False) == "delivery_token_expired"


def test_the_buyer_checks_the_hub_signature_but_is_not_the_audience() -> None:
    token = issue_delivery_token(_claims(), HUB, HUB.key_id)
    assert verify_delivery_token(token, KEYS, audience=None, now_s=NOW_S).aud == AUD
    assert _code(token, audience="someone-else") == "delivery_wrong_audience"


@pytest.mark.parametrize(("overrides", "code"), [
    ({"exp": NOW_S - 1}, "delivery_token_invalid"),
    ({"start_by": NOW_S + 7200}, "delivery_token_invalid"),
    ({"byte_limit": 10}, "delivery_token_invalid"),
    ({"size_bytes": 1}, "delivery_token_invalid"),
    ({"jti": "short"}, "delivery_token_invalid"),
    ({"cnf": {"jkt": "x", "kid": "y"}}, "delivery_token_invalid"),
    ({"seller_keys": {"ed25519": "z6Mk"}}, "delivery_token_invalid"),
    ({"extra": 1}, "delivery_unknown_claim"),
    ({"iat": 1.5}, "delivery_token_invalid"),
])
def test_the_hub_cannot_sign_a_malformed_claim_set(overrides, code) -> None:
    with pytest.raises(MarketError) as caught:
        check_claims(_claims(**overrides))
    assert caught.value.code == code
    with pytest.raises(MarketError):
        issue_delivery_token(_claims(**overrides), HUB, HUB.key_id)


def test_sizes_and_nesting_are_bounded_before_parsing() -> None:
    assert json_depth(b'{"a":[{"b":"[[[["}]}') == 3
    assert _code("a." * 2 + "a" * MAX_TOKEN_CHARS) == "delivery_token_invalid"
    header = b64url(canonical_json({"alg": "EdDSA", "typ": "aimarket-delivery+jwt", "kid": HUB.key_id}))
    big = b64url(canonical_json({**_claims(), "sub": "x" * 4000}))  # signed, but its claims exceed 4 KiB
    assert _code(f"{header}.{big}.{b64url(HUB.sign(f'{header}.{big}'.encode()))}") == "delivery_token_invalid"
    token = issue_delivery_token(_claims(), HUB, HUB.key_id)
    header, payload, signature = token.split(".")
    assert _code(f"{header}x.{payload}.{signature}") == "delivery_token_invalid"
