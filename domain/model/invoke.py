"""The invoke token (a hub-signed, key-bound permission to run one listing's compute at one node,
for a budget) and the money rules of a metered session.

Same form as the delivery token (``domain.model.delivery``): a compact JWS, EdDSA by the hub's
signing key, header exactly ``{"alg": "EdDSA", "typ": "aimarket-invoke+jwt", "kid": <hub key>}``,
header and claims RFC 8785 JCS, every segment bounded before parsing, duplicate members and
unknown claims refused. Claims (all required but ``nbf`` and ``endpoint``):

===================  ========================================================================
``iss``              the hub URL
``aud``              the seller device id
``sub``              the invocation id (the hub's hold on the buyer's channel)
``jti``              the token id (16..128 base64url characters); the node binds it durably
``iat``, ``nbf``?    issued at, not before (epoch s)
``start_by``         the session's first connection must come by then
``exp``              the session deadline: no call starts after it (``exp − iat ≤ 7 days``)
``listing_id``       the listing (uuid text) and ``listing_version`` (≥ 1) bought
``unit``             the metering unit (``domain.model.compute.UNITS``)
``unit_price_minor`` the price of one unit, integer minor units (≥ 0) of ``currency``
``currency``         currency or token code (``domain.model.money``)
``budget_minor``     the hold: the most the session may bill
``max_call_units``   the most units one call may count (the asset's ``max_units_per_call``)
``max_concurrency``  calls that may run at once in the session (1..64)
``cnf``              ``{"jkt": RFC 7638 thumbprint of the buyer's Ed25519 key}``
``seller_keys``      ``{"ed25519": z6Mk…, "x25519": z6LS…}``: the device's keys as the hub has them
``endpoint``?        where the buyer reaches the node (``host:port`` or ``tcp://host:port``)
===================  ========================================================================

The money rules (pure; the node, the buyer and the hub run the same code):

* one call's most is ``call_max_minor = max_call_units × unit_price_minor``;
* the node starts a call only if ``billed + in_flight + call_max ≤ budget`` (else
  ``budget_exhausted`` with the amount needed) and ``billed + in_flight + call_max ≤
  countersigned + max_concurrency × call_max`` (else ``invoke_countersignature_required``):
  :func:`admit_call`;
* the hub captures ``min(final cumulative, countersigned + max_concurrency × call_max, budget)``
  (:func:`capped_amount_minor`): a receipt the buyer did not countersign counts at most one
  call beyond the last countersigned amount per concurrent call slot (one call when
  ``max_concurrency`` is 1). The admission rule makes a node that follows it lose nothing to
  the cap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from domain.model.compute import UNITS
from domain.model.delivery import CLOCK_SKEW_S, jwk_thumbprint, token_segment
from domain.model.errors import (
    BudgetExhausted,
    InvalidInput,
    InvokeCnfMismatch,
    InvokeCountersignatureRequired,
    InvokeStartDeadlinePassed,
    InvokeTokenExpired,
    InvokeTokenInvalid,
    InvokeTokenNotYetValid,
    InvokeTokenSignatureInvalid,
    InvokeUnknownClaim,
    InvokeUnknownKid,
    InvokeWrongAudience,
    InvokeWrongTyp,
    SignatureInvalid,
)
from domain.model.jcs import canonical_json
from domain.model.keys import KxPublicKey, SigningKey, VerifyKey, b64url, b64url_decode
from domain.model.money import SCALES

TYP = "aimarket-invoke+jwt"
ALG = "EdDSA"
HEADER_FIELDS = frozenset({"alg", "typ", "kid"})
REQUIRED_CLAIMS = frozenset({
    "iss", "aud", "sub", "jti", "iat", "start_by", "exp", "listing_id", "listing_version", "unit", "unit_price_minor",
    "currency", "budget_minor", "max_call_units", "max_concurrency", "cnf", "seller_keys",
})
OPTIONAL_CLAIMS = frozenset({"nbf", "endpoint"})
MAX_TOKEN_CHARS = 8192
MAX_HEADER_BYTES = 512
MAX_PAYLOAD_BYTES = 4096
MAX_DEPTH = 4
MAX_LIFETIME_S = 7 * 86400
MAX_CONCURRENCY = 64
MAX_AMOUNT_MINOR = 2**50

_JTI = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_TEXT = re.compile(r"^[\x21-\x7e]{1,256}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ENDPOINT = re.compile(r"^(tcp://)?[A-Za-z0-9.\-\[\]:]{1,253}:[0-9]{1,5}$")


def _segment(text: str, limit: int, what: str) -> dict[str, Any]:
    return token_segment(text, limit, what, error=InvokeTokenInvalid, kind="invoke token")


@dataclass(frozen=True, slots=True)
class InvokeClaims:
    """A verified invoke token. ``raw`` is the claim set as signed; ``token`` the JWS."""

    raw: dict[str, Any]
    token: str
    kid: str
    seller_key: VerifyKey
    seller_kx_key: KxPublicKey

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "raw":
            raise AttributeError(name)
        try:
            return self.raw[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def cnf_jkt(self) -> str:
        return self.raw["cnf"]["jkt"]

    @property
    def call_max_minor(self) -> int:
        """The most one call may bill: ``max_call_units × unit_price_minor``."""
        return self.raw["max_call_units"] * self.raw["unit_price_minor"]

    def check_buyer_key(self, buyer_key: VerifyKey) -> None:
        """Raise InvokeCnfMismatch unless ``buyer_key``'s thumbprint is ``cnf.jkt``."""
        if jwk_thumbprint(buyer_key) != self.cnf_jkt:
            raise InvokeCnfMismatch("the buyer key does not match the token's cnf.jkt")

    def check_start(self, now_s: int, skew_s: int = CLOCK_SKEW_S) -> None:
        """Raise InvokeStartDeadlinePassed when a session that never started is too late."""
        if now_s > self.raw["start_by"] + skew_s:
            raise InvokeStartDeadlinePassed("the session's start deadline passed")


def _int(claims: dict[str, Any], name: str, low: int, high: int) -> int:
    value = claims[name]
    if type(value) is not int or not low <= value <= high:
        raise InvokeTokenInvalid(f"claim {name} must be an integer in [{low}, {high}]", param=name)
    return value


def _text(claims: dict[str, Any], name: str, pattern: re.Pattern[str]) -> None:
    if not isinstance(claims[name], str) or not pattern.fullmatch(claims[name]):
        raise InvokeTokenInvalid(f"claim {name} is malformed", param=name)


def check_claims(claims: dict[str, Any]) -> tuple[VerifyKey, KxPublicKey]:
    """Check a claim set's shape (closed, typed, coherent); return the seller's keys.

    Used by the hub before it signs and by every verifier after the signature checks.
    """
    unknown = set(claims) - REQUIRED_CLAIMS - OPTIONAL_CLAIMS
    if unknown:
        raise InvokeUnknownClaim(f"unknown invoke token claims: {sorted(unknown)}")
    missing = REQUIRED_CLAIMS - set(claims)
    if missing:
        raise InvokeTokenInvalid(f"invoke token misses claims: {sorted(missing)}")
    for name in ("iss", "aud", "sub"):
        _text(claims, name, _TEXT)
    _text(claims, "jti", _JTI)
    _text(claims, "listing_id", _UUID)
    if "endpoint" in claims:
        _text(claims, "endpoint", _ENDPOINT)
    iat = _int(claims, "iat", 0, 2**40)
    exp = _int(claims, "exp", iat, iat + MAX_LIFETIME_S)
    _int(claims, "start_by", iat, exp)
    if "nbf" in claims:
        _int(claims, "nbf", 0, exp)
    _int(claims, "listing_version", 1, 2**31)
    if claims["unit"] not in UNITS:
        raise InvokeTokenInvalid(f"claim unit must be one of {UNITS}", param="unit")
    if claims["currency"] not in SCALES:
        raise InvokeTokenInvalid(f"claim currency must be one of {sorted(SCALES)}", param="currency")
    price = _int(claims, "unit_price_minor", 0, 2**40)
    units = _int(claims, "max_call_units", 1, 2**31)
    _int(claims, "budget_minor", 1, MAX_AMOUNT_MINOR)
    _int(claims, "max_concurrency", 1, MAX_CONCURRENCY)
    if price * units > MAX_AMOUNT_MINOR:
        raise InvokeTokenInvalid("one call's most (max_call_units × unit_price_minor) is out of range")
    cnf, keys = claims["cnf"], claims["seller_keys"]
    if not isinstance(cnf, dict) or set(cnf) != {"jkt"} or not isinstance(cnf["jkt"], str):
        raise InvokeTokenInvalid("claim cnf must be {jkt}", param="cnf")
    try:
        if len(b64url_decode(cnf["jkt"])) != 32:
            raise InvokeTokenInvalid("cnf.jkt must be a SHA-256 thumbprint", param="cnf")
        if not isinstance(keys, dict) or set(keys) != {"ed25519", "x25519"}:
            raise InvokeTokenInvalid("claim seller_keys must be {ed25519, x25519}", param="seller_keys")
        return VerifyKey.from_multibase(keys["ed25519"]), KxPublicKey.from_multibase(keys["x25519"])
    except InvokeTokenInvalid:
        raise
    except InvalidInput as exc:
        raise InvokeTokenInvalid(f"invoke token claims are malformed: {exc.detail}") from exc


def issue_invoke_token(claims: dict[str, Any], signing_key: SigningKey, kid: str) -> str:
    """Sign ``claims`` as an invoke token (the hub's side); checked with :func:`check_claims`."""
    check_claims(claims)
    if not isinstance(kid, str) or not _TEXT.fullmatch(kid):
        raise InvalidInput("kid must be printable ASCII")
    header = b64url(canonical_json({"alg": ALG, "typ": TYP, "kid": kid}))
    payload = b64url(canonical_json(claims, allow_floats=False))
    if len(payload) > MAX_PAYLOAD_BYTES * 4 // 3 + 4:
        raise InvalidInput("invoke token claims too large")
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{b64url(signing_key.sign(signing_input))}"


def verify_invoke_token(
    token: str, hub_keys_by_kid: Mapping[str, VerifyKey], *, audience: str | None, now_s: int,
    skew_s: int = CLOCK_SKEW_S, require_start: bool = True,
) -> InvokeClaims:
    """Verify an invoke token and return its claims.

    ``audience`` is the checking node's device id (None for the buyer, who is not the
    audience); ``require_start=False`` when the ``jti`` is already bound (a reconnection).

    Raises:
        InvokeTokenInvalid (malformed), InvokeWrongTyp, InvokeUnknownClaim, InvokeUnknownKid,
        InvokeTokenSignatureInvalid, InvokeWrongAudience, InvokeTokenExpired,
        InvokeTokenNotYetValid, InvokeStartDeadlinePassed.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise InvokeTokenInvalid("an invoke token is a compact JWS of three segments")
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = _segment(header_b64, MAX_HEADER_BYTES, "header")
    if set(header) - HEADER_FIELDS:
        raise InvokeUnknownClaim(f"unknown invoke token header fields: {sorted(set(header) - HEADER_FIELDS)}")
    if header.get("typ") != TYP or header.get("alg") != ALG:
        raise InvokeWrongTyp(f"expected a token of typ {TYP} signed with {ALG}")
    kid = header.get("kid")
    key = hub_keys_by_kid.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise InvokeUnknownKid(f"no trusted hub key {kid!r}")
    try:
        key.verify(f"{header_b64}.{payload_b64}".encode("ascii"), b64url_decode(signature_b64))
    except (InvalidInput, SignatureInvalid) as exc:
        raise InvokeTokenSignatureInvalid("the invoke token's hub signature does not verify") from exc
    claims = _segment(payload_b64, MAX_PAYLOAD_BYTES, "claims")
    seller_key, seller_kx = check_claims(claims)
    if audience is not None and claims["aud"] != audience:
        raise InvokeWrongAudience("the invoke token is for another seller device")
    if now_s >= claims["exp"] + skew_s:
        raise InvokeTokenExpired("the invoke session's deadline passed")
    if claims["iat"] > now_s + skew_s or claims.get("nbf", 0) > now_s + skew_s:
        raise InvokeTokenNotYetValid("the invoke token is not valid yet")
    verified = InvokeClaims(claims, token, kid, seller_key, seller_kx)
    if require_start:
        verified.check_start(now_s, skew_s)
    return verified


def stored_claims(token: str) -> InvokeClaims:
    """The claims of a token this node verified when it bound it, read back from its own store.

    No signature or time check (the hub may have rotated its key since; the session was bound
    under the key it had then): only the shape. Never use it for a token from the network.
    """
    try:
        header_b64, payload_b64, _ = token.split(".")
        kid = _segment(header_b64, MAX_HEADER_BYTES, "header").get("kid")
        claims = _segment(payload_b64, MAX_PAYLOAD_BYTES, "claims")
    except ValueError as exc:
        raise InvokeTokenInvalid("a stored invoke token is a compact JWS") from exc
    seller_key, seller_kx = check_claims(claims)
    return InvokeClaims(claims, token, str(kid), seller_key, seller_kx)


# -- the money rules ------------------------------------------------------------------------
def admit_call(*, budget_minor: int, billed_minor: int, in_flight_minor: int, countersigned_minor: int,
               call_max_minor: int, max_concurrency: int) -> None:
    """Raise unless one more call (costing at most ``call_max_minor``) may start.

    Raises:
        BudgetExhausted: the budget could be exceeded; ``extra`` has ``amount_needed_minor``
            (this call's most), ``remaining_minor`` (budget less billed and in flight) and
            ``shortfall_minor``.
        InvokeCountersignatureRequired: more than ``max_concurrency`` calls' worth would be
            un-countersigned (the cap rule would not pay for it).
    """
    exposure = billed_minor + in_flight_minor + call_max_minor
    if exposure > budget_minor:
        remaining = max(0, budget_minor - billed_minor - in_flight_minor)
        raise BudgetExhausted(f"this call may cost {call_max_minor}; the session has {remaining} left",
                              amount_needed_minor=call_max_minor, remaining_minor=remaining,
                              shortfall_minor=call_max_minor - remaining)
    if exposure > countersigned_minor + max_concurrency * call_max_minor:
        raise InvokeCountersignatureRequired("countersign the latest receipt before more calls start",
                                             countersigned_minor=countersigned_minor, billed_minor=billed_minor)


def capped_amount_minor(*, final_cumulative_minor: int, countersigned_minor: int, call_max_minor: int,
                        max_concurrency: int, budget_minor: int) -> int:
    """What the hub captures: the final cumulative amount, but never more than the last
    countersigned amount plus one call per concurrent slot, nor more than the budget."""
    if min(final_cumulative_minor, countersigned_minor, call_max_minor, max_concurrency, budget_minor) < 0:
        raise InvalidInput("amounts are never negative")
    return min(final_cumulative_minor, countersigned_minor + max_concurrency * call_max_minor, budget_minor)


@dataclass(frozen=True, slots=True)
class Settlement:
    """The end of a session for the hub: capture ``captured_minor``, release ``released_minor``."""

    captured_minor: int
    released_minor: int
    currency: str


def settle(claims: InvokeClaims, *, final_cumulative_minor: int, countersigned_minor: int) -> Settlement:
    """Split the hold: the capped amount is captured, the rest of the budget released."""
    captured = capped_amount_minor(final_cumulative_minor=final_cumulative_minor,
                                   countersigned_minor=countersigned_minor, call_max_minor=claims.call_max_minor,
                                   max_concurrency=claims.max_concurrency, budget_minor=claims.budget_minor)
    return Settlement(captured, claims.budget_minor - captured, claims.currency)
