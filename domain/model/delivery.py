"""The delivery token: a hub-signed, key-bound permission to fetch one object from one node.

Compact JWS (RFC 7515) signed with the hub's Ed25519 signing key (``alg: EdDSA``, RFC 8037).
The header is exactly ``{"alg": "EdDSA", "typ": "aimarket-delivery+jwt", "kid": <hub key id>}``;
header and claims are serialised as RFC 8785 JCS, so the hub's issuance is deterministic.
Claims (all required unless marked optional, nothing else allowed):

=================  =============================================================================
``iss``            the hub URL
``aud``            the seller device id the node checks against its own
``sub``            the purchase id
``jti``            the token id (16..128 base64url characters); the node binds it at first byte
``iat``            issued at (epoch seconds)
``nbf``            optional: not before (epoch seconds)
``start_by``       the first byte must be served by then (short; resumes may go past it)
``exp``            the transfer deadline: nothing is served after it
``listing_id``     the listing (uuid text) and ``listing_version`` (int ≥ 1) sold
``content_hash``   ``sha256-<base64>`` (SRI) of the delivered object's bytes
``size_bytes``     the object's size; ``byte_limit`` the most bytes the node serves in total
``blocks``         the block commitment (``domain.model.blocks``)
``cnf``            ``{"jkt": RFC 7638 thumbprint of the buyer's per-purchase Ed25519 key}``
``seller_keys``    ``{"ed25519": z6Mk…, "x25519": z6LS…}``: the device keys as the hub holds them
``endpoint``       optional: where the buyer reaches the node (``host:port`` or ``tcp://host:port``)
=================  =============================================================================

Every segment's size and JSON nesting depth is bounded before it is parsed; duplicate JSON
member names are refused. Verification raises one error class per failure
(``domain.model.errors``); it never returns a falsy value. Time is an argument.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from domain.model.blocks import BlockCommitment
from domain.model.errors import (
    DeliveryCnfMismatch,
    DeliveryStartDeadlinePassed,
    DeliveryTokenExpired,
    DeliveryTokenInvalid,
    DeliveryTokenNotYetValid,
    DeliveryTokenSignatureInvalid,
    DeliveryUnknownClaim,
    DeliveryUnknownKid,
    DeliveryWrongAudience,
    DeliveryWrongTyp,
    InvalidInput,
    MarketError,
    SignatureInvalid,
)
from domain.model.jcs import canonical_json, loads_strict
from domain.model.keys import KxPublicKey, SigningKey, VerifyKey, b64url, b64url_decode

TYP = "aimarket-delivery+jwt"
ALG = "EdDSA"
HEADER_FIELDS = frozenset({"alg", "typ", "kid"})
REQUIRED_CLAIMS = frozenset({
    "iss", "aud", "sub", "jti", "iat", "start_by", "exp", "listing_id", "listing_version", "content_hash",
    "size_bytes", "byte_limit", "blocks", "cnf", "seller_keys",
})
OPTIONAL_CLAIMS = frozenset({"nbf", "endpoint"})
CLOCK_SKEW_S = 30
MAX_TOKEN_CHARS = 8192
MAX_HEADER_BYTES = 512
MAX_PAYLOAD_BYTES = 4096
MAX_DEPTH = 4
MAX_LIFETIME_S = 30 * 86400

_JTI = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_TEXT = re.compile(r"^[\x21-\x7e]{1,256}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SRI = re.compile(r"^sha256-[A-Za-z0-9+/]{43}=$")
_ENDPOINT = re.compile(r"^(tcp://)?[A-Za-z0-9.\-\[\]:]{1,253}:[0-9]{1,5}$")


def jwk_thumbprint(key: VerifyKey) -> str:
    """RFC 7638 thumbprint of an Ed25519 key as an OKP JWK (RFC 8037): base64url SHA-256 of
    ``{"crv":"Ed25519","kty":"OKP","x":"<base64url key>"}`` (members sorted, no spaces)."""
    text = '{"crv":"Ed25519","kty":"OKP","x":"' + b64url(key.to_bytes()) + '"}'
    return b64url(hashlib.sha256(text.encode("ascii")).digest())


def json_depth(data: bytes) -> int:
    """The deepest ``{``/``[`` nesting of JSON text, counted without parsing (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x7D, 0x5D):
            depth -= 1
    return deepest


def token_segment(text: str, limit: int, what: str, *, error: type[MarketError] = DeliveryTokenInvalid,
                  kind: str = "delivery token") -> dict[str, Any]:
    """One JWS segment (header or claims) as a JSON object, bounded before it is parsed; every
    failure is ``error`` (the delivery and the invoke tokens share this reading)."""
    if len(text) > limit * 4 // 3 + 4:
        raise error(f"{kind} {what} is too large")
    try:
        raw = b64url_decode(text)
    except InvalidInput as exc:
        raise error(f"{kind} {what} is not base64url") from exc
    if len(raw) > limit or json_depth(raw) > MAX_DEPTH:
        raise error(f"{kind} {what} is too large or nested too deeply")
    try:
        obj = loads_strict(raw)
    except InvalidInput as exc:
        raise error(f"{kind} {what} is not strict JSON: {exc.detail}") from exc
    if not isinstance(obj, dict):
        raise error(f"{kind} {what} is not a JSON object")
    return obj


@dataclass(frozen=True, slots=True)
class DeliveryClaims:
    """A verified token's claims, typed. ``raw`` is the claim set as signed; ``token`` the JWS."""

    raw: dict[str, Any]
    token: str
    kid: str
    blocks: BlockCommitment
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
        """The buyer key thumbprint the token is bound to."""
        return self.raw["cnf"]["jkt"]

    def check_buyer_key(self, buyer_key: VerifyKey) -> None:
        """Raise DeliveryCnfMismatch unless ``buyer_key``'s thumbprint is ``cnf.jkt``."""
        if jwk_thumbprint(buyer_key) != self.cnf_jkt:
            raise DeliveryCnfMismatch("the buyer key does not match the token's cnf.jkt")

    def check_start(self, now_s: int, skew_s: int = CLOCK_SKEW_S) -> None:
        """Raise DeliveryStartDeadlinePassed when a delivery that has not started is too late."""
        if now_s > self.raw["start_by"] + skew_s:
            raise DeliveryStartDeadlinePassed("the delivery's start deadline passed")


def _check_int(claims: dict[str, Any], name: str, low: int, high: int) -> int:
    value = claims[name]
    if type(value) is not int or not low <= value <= high:
        raise DeliveryTokenInvalid(f"claim {name} must be an integer in [{low}, {high}]", param=name)
    return value


def _check_text(claims: dict[str, Any], name: str, pattern: re.Pattern[str]) -> None:
    if not isinstance(claims[name], str) or not pattern.match(claims[name]):
        raise DeliveryTokenInvalid(f"claim {name} is malformed", param=name)


def check_claims(claims: dict[str, Any]) -> tuple[BlockCommitment, VerifyKey, KxPublicKey]:
    """Check a claim set's shape (closed, typed, coherent); return its parsed parts.

    Used by the hub before it signs and by every verifier after the signature checks.
    """
    unknown = set(claims) - REQUIRED_CLAIMS - OPTIONAL_CLAIMS
    if unknown:
        raise DeliveryUnknownClaim(f"unknown delivery token claims: {sorted(unknown)}")
    missing = REQUIRED_CLAIMS - set(claims)
    if missing:
        raise DeliveryTokenInvalid(f"delivery token misses claims: {sorted(missing)}")
    for name in ("iss", "aud", "sub"):
        _check_text(claims, name, _TEXT)
    _check_text(claims, "jti", _JTI)
    _check_text(claims, "listing_id", _UUID)
    _check_text(claims, "content_hash", _SRI)
    if "endpoint" in claims:
        _check_text(claims, "endpoint", _ENDPOINT)
    iat = _check_int(claims, "iat", 0, 2**40)
    exp = _check_int(claims, "exp", iat, iat + MAX_LIFETIME_S)
    _check_int(claims, "start_by", iat, exp)
    if "nbf" in claims:
        _check_int(claims, "nbf", 0, exp)
    _check_int(claims, "listing_version", 1, 2**31)
    size = _check_int(claims, "size_bytes", 0, 2**50)
    _check_int(claims, "byte_limit", size, 2 * size + 2**20)
    cnf, keys = claims["cnf"], claims["seller_keys"]
    if not isinstance(cnf, dict) or set(cnf) != {"jkt"} or not isinstance(cnf["jkt"], str):
        raise DeliveryTokenInvalid("claim cnf must be {jkt}", param="cnf")
    try:
        if len(b64url_decode(cnf["jkt"])) != 32:
            raise DeliveryTokenInvalid("cnf.jkt must be a SHA-256 thumbprint", param="cnf")
        if not isinstance(keys, dict) or set(keys) != {"ed25519", "x25519"} or not all(
                isinstance(k, str) for k in keys.values()):
            raise DeliveryTokenInvalid("claim seller_keys must be {ed25519, x25519}", param="seller_keys")
        blocks = BlockCommitment.from_json(claims["blocks"])
        blocks.check_size(size)
        return (blocks, *_seller_keys(keys["ed25519"], keys["x25519"]))
    except DeliveryTokenInvalid:
        raise
    except InvalidInput as exc:
        raise DeliveryTokenInvalid(f"delivery token claims are malformed: {exc.detail}") from exc


def _jcs_checked(obj: dict[str, Any]) -> bytes:
    """RFC 8785 JCS of the header or of a claim set :func:`check_claims` accepted, the fast way.

    Such an object holds only integers of at most 2**50 (each one type- and range-checked, so no
    float, bool or unsafe integer), objects with ASCII member names, and strings matched against
    ASCII patterns. When the standard encoder (sorted members, compact) escapes nothing, every
    string went out verbatim, as JCS writes it, integers are written alike, and the member
    order is JCS's (ASCII sorts the same in UTF-16): the bytes are the JCS bytes, six times
    faster (the hub signs one token per purchase). A string it had to escape falls back to the
    general implementation. ``tests/purchases/test_token_issuance.py`` compares the two.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    if "\\" in text:
        return canonical_json(obj, allow_floats=False)
    return text.encode("ascii")


@lru_cache(maxsize=1024)
def _seller_keys(ed25519: Any, x25519: Any) -> tuple[VerifyKey, KxPublicKey]:
    """A device's two keys parsed (cached: a seller's keys appear in every token the hub
    issues for it and every token its node checks, and parsing base58 and checking the point
    is most of a claim check; the function is pure, so the cache changes no answer)."""
    return VerifyKey.from_multibase(ed25519), KxPublicKey.from_multibase(x25519)


def issue_delivery_token(claims: dict[str, Any], signing_key: SigningKey, kid: str) -> str:
    """Sign ``claims`` as a delivery token (the hub's side).

    Args:
        claims: the claim set (see the module docstring); checked with :func:`check_claims`.
        signing_key: the hub's Ed25519 signing key.
        kid: the key id verifiers look the key up by (the key's ``key_id``).
    """
    check_claims(claims)
    if not isinstance(kid, str) or not _TEXT.match(kid):
        raise InvalidInput("kid must be printable ASCII")
    header = b64url(_jcs_checked({"alg": ALG, "typ": TYP, "kid": kid}))
    payload = b64url(_jcs_checked(claims))
    if len(payload) > MAX_PAYLOAD_BYTES * 4 // 3 + 4:
        raise InvalidInput("delivery token claims too large")
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{b64url(signing_key.sign(signing_input))}"


def _split(token: object) -> tuple[str, str, str]:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise DeliveryTokenInvalid("a delivery token is a compact JWS of three segments")
    header, payload, signature = token.split(".")
    return header, payload, signature


def verify_delivery_token(
    token: str, hub_keys_by_kid: Mapping[str, VerifyKey], *, audience: str | None, now_s: int,
    skew_s: int = CLOCK_SKEW_S, require_start: bool = True,
) -> DeliveryClaims:
    """Verify a delivery token and return its claims.

    Args:
        token: the compact JWS.
        hub_keys_by_kid: the hub signing keys the caller trusts, by ``kid``.
        audience: the checking node's device id; ``None`` only for the buyer, who holds the
            token and checks the hub signature and times but is not its audience.
        now_s: the current time (epoch seconds).
        skew_s: clock skew allowed on every time comparison.
        require_start: check ``start_by``; a node passes False when the ``jti`` is already
            bound to this buyer (a resume) and calls :meth:`DeliveryClaims.check_start` itself.

    Raises:
        DeliveryTokenInvalid (malformed), DeliveryWrongTyp, DeliveryUnknownClaim,
        DeliveryUnknownKid, DeliveryTokenSignatureInvalid, DeliveryWrongAudience,
        DeliveryTokenExpired, DeliveryTokenNotYetValid, DeliveryStartDeadlinePassed.
    """
    header_b64, payload_b64, signature_b64 = _split(token)
    header = token_segment(header_b64, MAX_HEADER_BYTES, "header")
    if set(header) - HEADER_FIELDS:
        raise DeliveryUnknownClaim(f"unknown delivery token header fields: {sorted(set(header) - HEADER_FIELDS)}")
    if header.get("typ") != TYP or header.get("alg") != ALG:
        raise DeliveryWrongTyp(f"expected a token of typ {TYP} signed with {ALG}")
    kid = header.get("kid")
    key = hub_keys_by_kid.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise DeliveryUnknownKid(f"no trusted hub key {kid!r}")
    try:
        signature = b64url_decode(signature_b64)
        key.verify(f"{header_b64}.{payload_b64}".encode("ascii"), signature)
    except (InvalidInput, SignatureInvalid) as exc:
        raise DeliveryTokenSignatureInvalid("the delivery token's hub signature does not verify") from exc
    claims = token_segment(payload_b64, MAX_PAYLOAD_BYTES, "claims")
    blocks, seller_key, seller_kx = check_claims(claims)
    if audience is not None and claims["aud"] != audience:
        raise DeliveryWrongAudience("the delivery token is for another seller device")
    if now_s >= claims["exp"] + skew_s:
        raise DeliveryTokenExpired("the delivery token's transfer deadline passed")
    if claims["iat"] > now_s + skew_s or claims.get("nbf", 0) > now_s + skew_s:
        raise DeliveryTokenNotYetValid("the delivery token is not valid yet")
    verified = DeliveryClaims(claims, token, kid, blocks, seller_key, seller_kx)
    if require_start:
        verified.check_start(now_s, skew_s)
    return verified
