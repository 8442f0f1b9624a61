"""Delivery receipts (signed by the seller device) and delivery confirmations (signed by the buyer).

Both are W3C VCs secured with an ``eddsa-jcs-2022`` Data Integrity proof (RFC 8785 JCS +
Ed25519, ``domain.model.vc``), issuer = the signer's ``did:key``, with a closed subject:

* ``DeliveryReceipt`` (device key): what the node served for one token (cumulative over its
  sessions, ``seq`` increasing by one per receipt, the last one wins): purchase, ``jti``,
  device, listing and version, object hash and size, block root, the buyer key thumbprint,
  bytes sent and the byte intervals served (``[start, end)``, sorted, merged; ``bytes_sent`` counts re-served bytes
  again, so it lies between the intervals' total and twice it), first and last
  byte time (ms), blocks the buyer acknowledged, sessions, the last session id, the outcome
  (``complete`` only when every byte was sent and the buyer confirmed every block;
  ``interrupted``; ``failed`` when the node refused to go on) and the digest of the buyer's
  confirmation when there is one.
* ``DeliveryConfirmation`` (the buyer's per-purchase ``cnf`` key): the buyer received and
  verified the whole object: purchase, ``jti``, device, object hash and size, block root,
  blocks verified, session id, time.

The hub verifies a receipt with :func:`verify_receipt` (device key as enrolled), a
confirmation with :func:`verify_confirmation` (``cnf.jkt`` of the token it issued), and ties
either to its token with :func:`check_against_token`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from domain.model.delivery import DeliveryClaims, jwk_thumbprint
from domain.model.errors import InvalidInput, ReceiptInvalid, SignatureInvalid
from domain.model.jcs import canonical_json, sha256_sri
from domain.model.keys import SigningKey, VerifyKey
from domain.model.vc import EDDSA_JCS_2022, sign_credential, verify_credential, xsd_datetime

CONTEXT = ["https://www.w3.org/ns/credentials/v2", "https://aimarket.dev/ns/delivery/v1"]
RECEIPT_TYPE = "DeliveryReceipt"
CONFIRMATION_TYPE = "DeliveryConfirmation"
OUTCOMES = ("complete", "interrupted", "failed")
MAX_INTERVALS = 1024
MAX_BYTES = 2**51

_B64_32 = re.compile(r"^[A-Za-z0-9_-]{43}$")
_SRI = re.compile(r"^sha256-[A-Za-z0-9+/]{43}=$")
_TEXT = re.compile(r"^[\x21-\x7e]{1,256}$")
_JTI = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _text(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and bool(pattern.match(v))


def _int(low: int = 0, high: int = MAX_BYTES) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


def _intervals(value: Any) -> bool:
    if not isinstance(value, list) or len(value) > MAX_INTERVALS:
        return False
    end = -1
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and all(type(x) is int for x in item)):
            return False
        if not end < item[0] < item[1] <= MAX_BYTES:  # sorted, merged, non-empty
            return False
        end = item[1]
    return True


_COMMON = {"purchase_id": _text(_TEXT), "jti": _text(_JTI), "device_id": _text(_TEXT),
           "content_hash": _text(_SRI), "size_bytes": _int(), "blocks_root": _text(_B64_32),
           "session": _text(_B64_32)}
RECEIPT_FIELDS: dict[str, Callable[[Any], bool]] = {
    **_COMMON, "listing_id": _text(_UUID), "listing_version": _int(1, 2**31), "buyer_jkt": _text(_B64_32),
    "seq": _int(1, 2**31), "sessions": _int(1, 2**31), "bytes_sent": _int(), "intervals": _intervals,
    "first_byte_ms": _int(0, 2**53 - 1), "last_byte_ms": _int(0, 2**53 - 1), "blocks_acked": _int(0, 2**31),
    "outcome": lambda v: v in OUTCOMES, "confirmation": lambda v: v is None or _text(_SRI)(v),
}
CONFIRMATION_FIELDS: dict[str, Callable[[Any], bool]] = {
    **_COMMON, "blocks_verified": _int(1, 2**31), "received_at_ms": _int(0, 2**53 - 1),
}


def merge_intervals(intervals: list[tuple[int, int]] | list[list[int]]) -> list[list[int]]:
    """Sort and merge ``[start, end)`` intervals, dropping empty ones."""
    merged: list[list[int]] = []
    for start, end in sorted((int(s), int(e)) for s, e in intervals if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _check_subject(subject: Any, fields: dict[str, Callable[[Any], bool]], what: str) -> dict[str, Any]:
    if not isinstance(subject, dict) or set(subject) != set(fields):
        names = sorted(set(subject) ^ set(fields)) if isinstance(subject, dict) else []
        raise ReceiptInvalid(f"{what} must have exactly its fields (differs on {names})")
    for name, check in fields.items():
        if not check(subject[name]):
            raise ReceiptInvalid(f"{what} field {name} is malformed", param=name)
    return subject


def _issue(vc_type: str, subject: dict[str, Any], key: SigningKey, now_ms: int, nonce: str) -> dict[str, Any]:
    created = xsd_datetime(datetime.fromtimestamp(now_ms // 1000, UTC))
    unsigned = {"@context": list(CONTEXT), "type": ["VerifiableCredential", vc_type], "issuer": key.verify_key.did_key,
                "validFrom": created, "credentialSubject": subject}
    return sign_credential(unsigned, key, created=created, nonce=nonce)


def _verify(vc: Any, vc_type: str, fields: dict[str, Callable[[Any], bool]], key: VerifyKey | None) -> tuple[
        dict[str, Any], VerifyKey]:
    if not isinstance(vc, dict) or set(vc) != {"@context", "type", "issuer", "validFrom", "credentialSubject", "proof"}:
        raise ReceiptInvalid(f"a {vc_type} is a closed credential")
    if vc["@context"] != CONTEXT or vc["type"] != ["VerifiableCredential", vc_type]:
        raise ReceiptInvalid(f"not a {vc_type}")
    if not isinstance(vc["issuer"], str) or not vc["issuer"].startswith("did:key:"):
        raise ReceiptInvalid(f"a {vc_type} is issued by a did:key")
    try:
        # Only eddsa-jcs-2022, refused before any work: a node must not make the hub run RDF
        # canonicalisation (bounded, but up to ~0.5 s of CPU a message) for a receipt.
        proof = verify_credential(vc, expected_key=key, suites=(EDDSA_JCS_2022,))
    except (SignatureInvalid, InvalidInput) as exc:
        if isinstance(exc, ReceiptInvalid):
            raise
        raise ReceiptInvalid(f"{vc_type} proof does not verify: {exc.detail}") from exc
    if proof.cryptosuite != "eddsa-jcs-2022":
        raise ReceiptInvalid(f"a {vc_type} is secured with eddsa-jcs-2022")
    return _check_subject(vc["credentialSubject"], fields, vc_type), proof.verify_key


def issue_receipt(subject: dict[str, Any], device_key: SigningKey, *, now_ms: int, nonce: str) -> dict[str, Any]:
    """Sign a receipt subject (see :data:`RECEIPT_FIELDS`) with the device key."""
    return _issue(RECEIPT_TYPE, _check_subject(subject, RECEIPT_FIELDS, RECEIPT_TYPE), device_key, now_ms, nonce)


def verify_receipt(receipt: Any, *, device_key: VerifyKey) -> dict[str, Any]:
    """Verify a receipt signed by ``device_key``; return its subject. Raises ReceiptInvalid."""
    subject, _ = _verify(receipt, RECEIPT_TYPE, RECEIPT_FIELDS, device_key)
    covered = sum(e - s for s, e in subject["intervals"])
    if not covered <= subject["bytes_sent"] <= 2 * covered:
        raise ReceiptInvalid("bytes_sent must lie between the bytes covered and twice that (each byte at most twice)")
    if subject["intervals"] and subject["intervals"][-1][1] > subject["size_bytes"]:
        raise ReceiptInvalid("an interval runs past the object")
    return subject


def issue_confirmation(subject: dict[str, Any], buyer_key: SigningKey, *, now_ms: int, nonce: str) -> dict[str, Any]:
    """Sign a confirmation subject (see :data:`CONFIRMATION_FIELDS`) with the buyer's cnf key."""
    return _issue(CONFIRMATION_TYPE, _check_subject(subject, CONFIRMATION_FIELDS, CONFIRMATION_TYPE), buyer_key,
                  now_ms, nonce)


def verify_confirmation(confirmation: Any, *, cnf_jkt: str) -> dict[str, Any]:
    """Verify a confirmation made by the key whose RFC 7638 thumbprint is ``cnf_jkt``."""
    subject, key = _verify(confirmation, CONFIRMATION_TYPE, CONFIRMATION_FIELDS, None)
    if jwk_thumbprint(key) != cnf_jkt:
        raise ReceiptInvalid("the confirmation is signed by another key than the token's cnf key")
    return subject


def digest(credential: dict[str, Any]) -> str:
    """``sha256-<base64>`` of the credential's JCS bytes (a receipt names its confirmation so)."""
    return sha256_sri(canonical_json(credential))


def check_against_token(subject: dict[str, Any], claims: DeliveryClaims) -> None:
    """Raise ReceiptInvalid unless a receipt or confirmation subject is about this token."""
    expected = {"purchase_id": claims.sub, "jti": claims.jti, "device_id": claims.aud,
                "content_hash": claims.content_hash, "size_bytes": claims.size_bytes,
                "blocks_root": claims.raw["blocks"]["root"]}
    if "listing_id" in subject:
        expected |= {"listing_id": claims.listing_id, "listing_version": claims.listing_version,
                     "buyer_jkt": claims.cnf_jkt}
    wrong = sorted(name for name, value in expected.items() if subject.get(name) != value)
    if wrong:
        raise ReceiptInvalid(f"the subject differs from the token on {wrong}")
    if "bytes_sent" in subject and subject["bytes_sent"] > claims.byte_limit:
        raise ReceiptInvalid("the receipt counts more bytes than the token allows")
