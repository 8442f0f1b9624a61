"""The hub's token issuance: its fast canonical JSON writes the JCS bytes (RFC 8785) for
every header and claim set it signs, and the token verifies with the published code."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.model.delivery import _jcs_checked, issue_delivery_token, verify_delivery_token
from domain.model.jcs import canonical_json
from tests.purchases.model_helpers import NOW_S, Sale

KEYS = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
VALUES = st.recursive(
    st.one_of(st.integers(min_value=-(2**50), max_value=2**50), st.text(max_size=20),
              st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)),
    lambda children: st.dictionaries(KEYS, children, max_size=5), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=12))
def test_the_fast_path_writes_the_jcs_bytes(obj) -> None:
    assert _jcs_checked(obj) == canonical_json(obj)


def test_escapes_and_non_ascii_take_the_general_path() -> None:
    for obj in ({"a": 'quote"'}, {"a": "back\\slash"}, {"a": "é"}, {"é": 1}, {"a": "\u2028"}, {"a": "\x01"}):
        assert _jcs_checked(obj) == canonical_json(obj)


def test_an_issued_token_is_jcs_signed_and_verifies() -> None:
    sale = Sale()
    token = issue_delivery_token(sale.claims, sale.hub_key, "signing-1")
    header, payload, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert base64.urlsafe_b64decode(pad(payload)) == canonical_json(sale.claims)
    assert base64.urlsafe_b64decode(pad(header)) == canonical_json(
        {"alg": "EdDSA", "typ": "aimarket-delivery+jwt", "kid": "signing-1"})
    claims = verify_delivery_token(token, {"signing-1": sale.hub_key.verify_key}, audience=sale.device_id,
                                   now_s=NOW_S)
    assert claims.raw == sale.claims and claims.seller_key == sale.device_key.verify_key
