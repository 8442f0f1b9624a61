"""Compact JWTs: HS256 platform session tokens and EdDSA device tokens.

Verification always raises (``TokenInvalid``) and never returns a falsy value. Time is an
argument (``now_s``), so freezegun and replays behave the same; PyJWT's own clock checks
are switched off and done here against that argument.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from domain.model.errors import MarketError, TokenInvalid
from domain.model.json_input import check_depth, loads_bounded

DEVICE_JWT_TTL_S_MAX = 300  # short-lived: a stolen token is worth five minutes at most
CLOCK_SKEW_S = 30
SESSION_TYP = "session"
ACCESS_TYP = "access"  # OAuth2 client-credentials access token
DEVICE_TYP = "device"
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class TokenHeader:
    alg: str
    kid: str


def peek_header(token: str) -> TokenHeader:
    """Read the unverified header to choose a key; never trust anything else unverified.

    Only the header segment is decoded (PyJWT's helper decodes all three, which costs more
    than the signature check on the hot path); PyJWT still does the verification.
    """
    segment = token.split(".", 1)[0]
    if token.count(".") != 2 or not _B64URL_RE.match(segment):
        raise TokenInvalid("malformed bearer token")
    try:
        header = loads_bounded(_b64(segment))
    except (MarketError, binascii.Error):
        raise TokenInvalid("malformed bearer token") from None
    if not isinstance(header, dict):
        raise TokenInvalid("malformed bearer token")
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or not isinstance(kid, str) or not kid:
        raise TokenInvalid("token header needs alg and kid")
    return TokenHeader(alg, kid)


def _check_times(claims: dict[str, Any], now_s: int, ttl_s_max: int | None) -> None:
    iat, exp = claims.get("iat"), claims.get("exp")
    if type(iat) is not int or type(exp) is not int:
        raise TokenInvalid("token needs integer iat and exp")
    if exp <= now_s - CLOCK_SKEW_S:
        raise TokenInvalid("token expired")
    if iat > now_s + CLOCK_SKEW_S:
        raise TokenInvalid("token issued in the future")
    if ttl_s_max is not None and exp - iat > ttl_s_max:
        raise TokenInvalid(f"token lifetime above {ttl_s_max} s")


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _decode(token: str, key: Any, alg: str, audience: str) -> dict[str, Any]:
    # PyJWT parses header and claims with the standard json module: bound their depth first.
    try:
        for segment in token.split(".", 2)[:2]:
            check_depth(_b64(segment))
    except (MarketError, binascii.Error, ValueError):
        raise TokenInvalid("malformed bearer token") from None
    try:
        return jwt.decode(
            token, key=key, algorithms=[alg], audience=audience,
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "require": ["aud"]},
        )
    except jwt.PyJWTError as exc:
        raise TokenInvalid(f"token rejected: {exc}") from None


# -- HS256 platform tokens -------------------------------------------------------------------
def encode_hs256(claims: dict[str, Any], key: bytes, kid: str) -> str:
    return jwt.encode(claims, key, algorithm="HS256", headers={"kid": kid})


def decode_hs256(token: str, key: bytes, *, audience: str, now_s: int, typs: tuple[str, ...]) -> dict[str, Any]:
    claims = _decode(token, key, "HS256", audience)
    check_hs256_claims(claims, now_s=now_s, typs=typs)
    return claims


def check_hs256_claims(claims: dict[str, Any], *, now_s: int, typs: tuple[str, ...]) -> None:
    """The checks that depend on time and use, not on the signature."""
    _check_times(claims, now_s, None)
    if claims.get("typ") not in typs:
        raise TokenInvalid(f"expected a token of type {' or '.join(typs)}")


# -- EdDSA device tokens ---------------------------------------------------------------------
def encode_device_jwt(
    seed: bytes, *, kid: str, device_id: str, audience: str, iat_s: int, jti: str, ttl_s: int = 120
) -> str:
    """Sign a device token with the node's Ed25519 key (32-byte seed)."""
    claims = {"iss": device_id, "sub": device_id, "aud": audience, "iat": iat_s, "exp": iat_s + ttl_s,
              "jti": jti, "typ": DEVICE_TYP}
    return jwt.encode(claims, Ed25519PrivateKey.from_private_bytes(seed), algorithm="EdDSA", headers={"kid": kid})


def decode_device_jwt(token: str, public_key: bytes, *, audience: str, now_s: int) -> dict[str, Any]:
    claims = _decode(token, Ed25519PublicKey.from_public_bytes(public_key), "EdDSA", audience)
    _check_times(claims, now_s, DEVICE_JWT_TTL_S_MAX)
    jti = claims.get("jti")
    if claims.get("typ") != DEVICE_TYP or not isinstance(jti, str) or not 8 <= len(jti) <= 128:
        raise TokenInvalid("device token needs typ=device and a jti of 8..128 characters")
    if claims.get("sub") != claims.get("iss"):
        raise TokenInvalid("device token sub must equal iss")
    return claims
