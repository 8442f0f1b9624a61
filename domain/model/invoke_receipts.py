"""Invocation receipts (node), countersignatures (buyer) and safety rejections (node): W3C VCs.

Each is a closed credential secured with one ``eddsa-jcs-2022`` Data Integrity proof (exactly
as ``domain.model.vc`` makes and checks them: ``vc.verify_credential`` accepts every one made
here, and the tests check both ways), context ``[credentials/v2, https://aimarket.dev/ns/invoke/v1]``,
issuer the signer's ``did:key``. This module signs and verifies them on a faster path than the
general one (the proof's shape is fixed, the subject holds only ASCII keys, integers, text,
booleans and null, so RFC 8785 is orjson with sorted keys): a compute session signs one receipt
per call.

* ``InvocationReceipt`` (device key), **cumulative** per token: :data:`RECEIPT_FIELDS`. Every
  billed field is signed: the session (``invocation_id``, ``jti``), the connection (``TH2``),
  ``seq`` (+1 per receipt of the token, across connections), the call, the unit, unit price and
  currency, units and amount of this call and cumulative, the budget, the input and output
  hashes and sizes, start and end times, the outcome (``ok`` billed; ``failed``, ``timeout``,
  ``cancelled`` not billed, with the error code; ``final`` the session's last receipt, with
  its ``end_reason``) and what the node holds countersigned.
* ``InvocationCountersignature`` (the buyer's ``cnf`` key): the cumulative amount the buyer
  accepts, naming the receipt by its digest.
* ``InvocationRejection`` (device key): a call the safety pre-check refused; costs nothing.

:func:`verify_receipt` raises one code per failure, checked in this order:
``invoke_receipt_invalid`` (not the closed shape, a field missing or malformed),
``invoke_receipt_tampered`` (the proof does not verify), ``invoke_receipt_invalid`` (the
amounts or the outcome rules do not add up), ``invoke_unit_price_changed`` (unit, price or currency differ from the token),
``invoke_receipt_replayed`` (another session or connection, or ``seq`` not above the last one),
``invoke_over_budget`` (cumulative amount above the budget).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from domain.model.compute import UNITS
from domain.model.delivery import jwk_thumbprint
from domain.model.errors import (
    InvalidInput,
    InvokeCountersignatureInvalid,
    InvokeOverBudget,
    InvokeReceiptInvalid,
    InvokeReceiptReplayed,
    InvokeReceiptTampered,
    InvokeUnitPriceChanged,
    MarketError,
    SignatureInvalid,
)
from domain.model.invoke import InvokeClaims
from domain.model.jcs import canonical_json, loads_strict, sha256_sri
from domain.model.keys import SigningKey, VerifyKey
from domain.model.money import SCALES
from domain.model.vc_datetime import UTC_DATETIME, xsd_datetime

CONTEXT = ["https://www.w3.org/ns/credentials/v2", "https://aimarket.dev/ns/invoke/v1"]
RECEIPT_TYPE, COUNTERSIGNATURE_TYPE, REJECTION_TYPE = (
    "InvocationReceipt", "InvocationCountersignature", "InvocationRejection")
OUTCOMES = ("ok", "failed", "timeout", "cancelled", "final")
END_REASONS = ("closed", "deadline", "budget", "limit")
PROOF_FIELDS = frozenset({"type", "cryptosuite", "created", "verificationMethod", "proofPurpose", "nonce",
                          "@context", "proofValue"})
VC_FIELDS = frozenset({"@context", "type", "issuer", "validFrom", "credentialSubject", "proof"})
MAX_INT = 2**53 - 1

_B64_32 = re.compile(r"^[A-Za-z0-9_-]{43}$")
_SRI = re.compile(r"^sha256-[A-Za-z0-9+/]{43}=$")
_TEXT = re.compile(r"^[\x21-\x7e]{1,256}$")
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DETAIL = re.compile(r"^[\x20-\x7e]{0,256}$")
_JTI = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
Check = Callable[[Any], bool]


def _text(pattern: re.Pattern[str]) -> Check:
    return lambda v: type(v) is str and pattern.fullmatch(v) is not None


def _int(low: int = 0, high: int = MAX_INT) -> Check:
    return lambda v: type(v) is int and low <= v <= high


def _maybe(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _bool(v: Any) -> bool:
    return type(v) is bool


_IDENTITY: dict[str, Check] = {"invocation_id": _text(_TEXT), "jti": _text(_JTI), "device_id": _text(_TEXT)}
RECEIPT_FIELDS: dict[str, Check] = {
    **_IDENTITY, "listing_id": _text(_UUID), "listing_version": _int(1, 2**31), "buyer_jkt": _text(_B64_32),
    "connection": _text(_B64_32), "seq": _int(1, 2**31), "call": _int(0, 2**32 - 1), "unit": lambda v: v in UNITS,
    "unit_price_minor": _int(), "currency": lambda v: v in SCALES, "units": _int(), "amount_minor": _int(),
    "cumulative_units": _int(), "cumulative_amount_minor": _int(), "budget_minor": _int(1),
    "outcome": lambda v: v in OUTCOMES, "error": _maybe(_text(_CODE)), "billed": _bool,
    "input_hash": _maybe(_text(_SRI)), "output_hash": _maybe(_text(_SRI)), "input_bytes": _int(),
    "output_bytes": _int(), "started_ms": _int(), "ended_ms": _int(), "countersigned_seq": _int(0, 2**31),
    "countersigned_amount_minor": _int(), "final": _bool, "end_reason": lambda v: v is None or v in END_REASONS,
}
COUNTERSIGNATURE_FIELDS: dict[str, Check] = {
    **_IDENTITY, "seq": _int(1, 2**31), "cumulative_units": _int(), "cumulative_amount_minor": _int(),
    "unit_price_minor": _int(), "currency": lambda v: v in SCALES, "receipt": _text(_SRI), "signed_ms": _int(),
}
REJECTION_FIELDS: dict[str, Check] = {
    **_IDENTITY, "listing_id": _text(_UUID), "buyer_jkt": _text(_B64_32), "connection": _text(_B64_32),
    "call": _int(0, 2**32 - 1), "rule": _text(_TEXT), "code": _text(_CODE),
    "detail": _text(_DETAIL), "input_hash": _maybe(_text(_SRI)),
    "amount_minor": lambda v: v == 0, "at_ms": _int(),
}


# -- the fast, exact eddsa-jcs-2022 path ----------------------------------------------------
def _simple(value: Any) -> bool:
    """Whether orjson's sorted output is RFC 8785 for ``value`` (ASCII keys, safe ints, no floats)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -MAX_INT <= value <= MAX_INT
    if kind is list:
        return all(_simple(item) for item in value)
    if kind is dict:
        return all(type(k) is str and k.isascii() and _simple(v) for k, v in value.items())
    return False


def jcs(value: Any) -> bytes:
    """RFC 8785 bytes of ``value``: orjson (sorted keys) where that is exact, else ``canonical_json``."""
    if _simple(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # a lone surrogate: let the reference refuse it
            pass
    return canonical_json(value)


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_PAIRS = [_B58[i // 58] + _B58[i % 58] for i in range(58 * 58)]  # two base58 digits at a time
_PAIR_INDEX = {pair: index for index, pair in enumerate(_PAIRS)}
_DIGIT_INDEX = {char: index for index, char in enumerate(_B58)}
_CHUNK = 58**10  # ten digits: the big-integer division runs 9 times for 64 bytes, not 88


def signature_to_base58(raw: bytes) -> str:
    """base58btc of ``raw`` (Bitcoin alphabet, one ``1`` per leading zero byte): ``base58.b58encode``."""
    value, pairs = int.from_bytes(raw, "big"), []
    while value:
        value, chunk = divmod(value, _CHUNK)
        for _ in range(5):
            chunk, pair = divmod(chunk, 58 * 58)
            pairs.append(_PAIRS[pair])
    digits = "".join(reversed(pairs)).lstrip("1")
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + digits


def signature_from_base58(text: str) -> bytes:
    """The 64-byte signature a ``z``-less base58btc ``proofValue`` spells, canonical form only
    (one leading ``1`` per leading zero byte, nothing longer): ValueError otherwise."""
    if len(text) > 88:
        raise ValueError("longer than the base58 of 64 bytes")
    value, start = 0, len(text) % 2
    if start:
        value = _DIGIT_INDEX[text[0]]  # KeyError for a non-alphabet character
    for at in range(start, len(text), 2):
        value = value * 3364 + _PAIR_INDEX[text[at : at + 2]]
    if value >= 1 << 512:
        raise ValueError("more than 64 bytes")
    raw = value.to_bytes(64, "big")
    if len(text) - len(text.lstrip("1")) != len(raw) - len(raw.lstrip(b"\0")):
        raise ValueError("not the canonical base58 of 64 bytes")
    return raw


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@lru_cache(maxsize=256)
def _names(raw: bytes) -> tuple[str, str]:
    key = VerifyKey.from_bytes(raw)
    return key.did_key, key.verification_method


@lru_cache(maxsize=64)
def _created(at_s: int) -> str:
    return xsd_datetime(datetime.fromtimestamp(at_s, UTC))


def _sign(vc_type: str, subject: dict[str, Any], key: SigningKey, now_ms: int, nonce: str) -> dict[str, Any]:
    if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise InvalidInput("a credential nonce is 16..64 base64url characters")
    did, vm = _names(key.verify_key.to_bytes())
    created = _created(now_ms // 1000)
    unsigned = {"@context": CONTEXT, "type": ["VerifiableCredential", vc_type], "issuer": did, "validFrom": created,
                "credentialSubject": subject}
    config = {"type": "DataIntegrityProof", "cryptosuite": "eddsa-jcs-2022", "created": created,
              "verificationMethod": vm, "proofPurpose": "assertionMethod", "nonce": nonce, "@context": CONTEXT}
    # The subject passed its field checks, the rest is fixed ASCII: orjson's sorted output is JCS.
    signature = key.sign(hashlib.sha256(_dumps(config)).digest() + hashlib.sha256(_dumps(unsigned)).digest())
    return {**unsigned, "proof": {**config, "proofValue": "z" + signature_to_base58(signature)}}


def _verify(vc: Any, vc_type: str, key: VerifyKey, fields: dict[str, Check]) -> dict[str, Any]:
    """Check the closed credential shape, the subject's fields, then the proof under ``key``.

    Raises:
        InvokeReceiptInvalid: not a closed credential of ``vc_type`` with our proof shape, or a
            subject field missing, unknown or malformed.
        InvokeReceiptTampered: the proof does not verify (any changed byte of it or the document).
    """
    if not isinstance(vc, dict) or vc.keys() != VC_FIELDS or not isinstance(vc["proof"], dict):
        raise InvokeReceiptInvalid(f"a {vc_type} is a closed credential with one proof")
    proof = vc["proof"]
    did, vm = _names(key.to_bytes())
    if (proof.keys() != PROOF_FIELDS or proof["type"] != "DataIntegrityProof"
            or proof["cryptosuite"] != "eddsa-jcs-2022" or proof["proofPurpose"] != "assertionMethod"
            or vc["@context"] != CONTEXT or vc["type"] != ["VerifiableCredential", vc_type]
            or not isinstance(vc["validFrom"], str) or not UTC_DATETIME.fullmatch(vc["validFrom"])
            or not isinstance(proof["created"], str) or not UTC_DATETIME.fullmatch(proof["created"])
            or not isinstance(proof["nonce"], str) or not _NONCE.fullmatch(proof["nonce"])
            or not isinstance(proof["proofValue"], str) or not proof["proofValue"].startswith("z")):
        raise InvokeReceiptInvalid(f"not a {vc_type} with an eddsa-jcs-2022 proof")
    subject = _check_fields(vc["credentialSubject"], fields, vc_type, InvokeReceiptInvalid)
    if vc["issuer"] != did or proof["verificationMethod"] != vm or proof["@context"] != vc["@context"]:
        raise InvokeReceiptTampered(f"the {vc_type} is not signed by the expected key")
    try:
        signature = signature_from_base58(proof["proofValue"][1:])
        config = {name: value for name, value in proof.items() if name != "proofValue"}
        unsigned = {name: value for name, value in vc.items() if name != "proof"}
        # Every value is now checked ASCII text, a bounded integer, a boolean or null: orjson is JCS.
        key.verify(hashlib.sha256(_dumps(config)).digest() + hashlib.sha256(_dumps(unsigned)).digest(), signature)
    except (ValueError, KeyError, UnicodeEncodeError, SignatureInvalid, InvalidInput) as exc:
        raise InvokeReceiptTampered(f"the {vc_type}'s proof does not verify") from exc
    return subject


def _check_fields(subject: Any, fields: dict[str, Check], what: str, error: type[MarketError]) -> dict[str, Any]:
    if not isinstance(subject, dict) or subject.keys() != fields.keys():
        names = sorted(set(subject) ^ set(fields)) if isinstance(subject, dict) else []
        raise error(f"{what} must have exactly its fields (differs on {names})")
    for name, check in fields.items():
        if not check(subject[name]):
            raise error(f"{what} field {name} is malformed", param=name)
    return subject


def digest(credential: dict[str, Any]) -> str:
    """``sha256-<base64>`` of the credential's JCS bytes (a countersignature names its receipt so).
    ``credential`` is one this module issued or verified (so orjson's sorted bytes are its JCS)."""
    return sha256_sri(_dumps(credential))


def decode(data: bytes) -> Any:
    """Parse a credential as it came off the wire, duplicate member names refused.

    Fast path: a body already in canonical form (what every implementation of this protocol
    sends) parses with orjson and re-serialises to the same bytes, which also proves it had no
    duplicate member (a duplicate would be dropped and the bytes would differ); anything else
    goes through ``loads_strict``."""
    try:
        value = orjson.loads(data)
        if _dumps(value) == data:
            return value
    except orjson.JSONDecodeError:
        pass
    return loads_strict(data)


def encode(credential: dict[str, Any]) -> bytes:
    """The JCS bytes of a credential this module issued or verified (what goes on the wire)."""
    return _dumps(credential)


# -- receipts -------------------------------------------------------------------------------
def _coherent(s: dict[str, Any]) -> None:
    """The arithmetic and the outcome rules inside one receipt (InvokeReceiptInvalid)."""
    price = s["unit_price_minor"]
    problems = []
    if s["amount_minor"] != s["units"] * price or s["cumulative_amount_minor"] != s["cumulative_units"] * price:
        problems.append("amounts are not units × unit price")
    if s["billed"] != (s["outcome"] == "ok"):
        problems.append("exactly the ok outcome is billed")
    if not s["billed"] and (s["units"] or s["amount_minor"] or s["output_hash"] is not None):
        problems.append("an unbilled call counts no units and has no output")
    if s["final"] != (s["outcome"] == "final") or s["final"] != (s["end_reason"] is not None):
        problems.append("final, outcome final and end_reason go together")
    if (s["outcome"] in ("ok", "final")) != (s["error"] is None):
        problems.append("an error code is given exactly when the call failed")
    if s["started_ms"] > s["ended_ms"] or s["cumulative_units"] < s["units"]:
        problems.append("times or cumulative units out of order")
    if s["countersigned_seq"] >= s["seq"] or s["countersigned_amount_minor"] > s["cumulative_amount_minor"]:
        problems.append("the countersigned state is ahead of the receipt")
    if problems:
        raise InvokeReceiptInvalid("; ".join(problems))


def issue_receipt(subject: dict[str, Any], device_key: SigningKey, *, now_ms: int, nonce: str,
                  check_fields: bool = True) -> dict[str, Any]:
    """Sign a receipt subject (:data:`RECEIPT_FIELDS`, coherent) with the device key.

    ``check_fields=False`` skips the per-field format checks (never the arithmetic rules) for a
    subject built by the node's session from fields checked once per session (see
    :func:`check_receipt_template`) and integers it computed itself."""
    if check_fields:
        _check_fields(subject, RECEIPT_FIELDS, RECEIPT_TYPE, InvokeReceiptInvalid)
    elif subject.keys() != RECEIPT_FIELDS.keys():
        raise InvokeReceiptInvalid("a receipt subject has exactly its fields")
    _coherent(subject)
    return _sign(RECEIPT_TYPE, subject, device_key, now_ms, nonce)


def check_receipt_template(fixed: dict[str, Any]) -> dict[str, Any]:
    """Check, once per session, the receipt fields that never change in it (identity, unit,
    price, currency, budget); returns them."""
    for name, value in fixed.items():
        if name not in RECEIPT_FIELDS or not RECEIPT_FIELDS[name](value):
            raise InvokeReceiptInvalid(f"receipt field {name} is malformed", param=name)
    return fixed


def verify_receipt(receipt: Any, claims: InvokeClaims, *, previous: dict[str, Any] | None = None,
                   connection: str | None = None) -> dict[str, Any]:
    """Verify a receipt for the session ``claims`` describe; return its subject.

    Args:
        receipt: the credential.
        claims: the verified invoke token (the seller key, unit, price, budget, identity).
        previous: the subject of the last receipt accepted for this token, if any: ``seq``
            must be above it, and a next ``seq`` must add up exactly.
        connection: the current connection id (``TH2``, base64url), when the receipt must be
            from it.

    Raises (in this order): InvokeReceiptInvalid (shape), InvokeReceiptTampered, InvokeReceiptInvalid
    (arithmetic), InvokeUnitPriceChanged, InvokeReceiptReplayed, InvokeOverBudget.
    """
    subject = _verify(receipt, RECEIPT_TYPE, claims.seller_key, RECEIPT_FIELDS)
    _coherent(subject)
    if (subject["unit"], subject["unit_price_minor"], subject["currency"]) != (
            claims.unit, claims.unit_price_minor, claims.currency):
        raise InvokeUnitPriceChanged("the receipt's unit, unit price or currency is not the token's")
    identity = {"invocation_id": claims.sub, "jti": claims.jti, "device_id": claims.aud,
                "listing_id": claims.listing_id, "listing_version": claims.listing_version,
                "buyer_jkt": claims.cnf_jkt}
    wrong = sorted(name for name, value in identity.items() if subject[name] != value)
    if wrong or (connection is not None and subject["connection"] != connection):
        raise InvokeReceiptReplayed(f"the receipt is for another session (differs on {wrong or ['connection']})")
    if previous is not None:
        if subject["seq"] <= previous["seq"] or previous["final"]:
            raise InvokeReceiptReplayed(f"receipt seq {subject['seq']} does not follow {previous['seq']}")
        if subject["cumulative_units"] < previous["cumulative_units"] or (
                subject["seq"] == previous["seq"] + 1
                and subject["cumulative_units"] != previous["cumulative_units"] + subject["units"]):
            raise InvokeReceiptInvalid("the cumulative units do not add up from the previous receipt")
    if subject["budget_minor"] != claims.budget_minor or subject["cumulative_amount_minor"] > claims.budget_minor:
        raise InvokeOverBudget(f"cumulative {subject['cumulative_amount_minor']} against a budget of "
                               f"{claims.budget_minor}")
    return subject


# -- countersignatures ----------------------------------------------------------------------
def issue_countersignature(receipt: dict[str, Any], buyer_key: SigningKey, *, now_ms: int,
                           nonce: str) -> dict[str, Any]:
    """The buyer's countersignature of a receipt it verified: it accepts the cumulative amount."""
    s = receipt["credentialSubject"]
    subject = {"invocation_id": s["invocation_id"], "jti": s["jti"], "device_id": s["device_id"], "seq": s["seq"],
               "cumulative_units": s["cumulative_units"], "cumulative_amount_minor": s["cumulative_amount_minor"],
               "unit_price_minor": s["unit_price_minor"], "currency": s["currency"], "receipt": digest(receipt),
               "signed_ms": now_ms}
    _check_fields(subject, COUNTERSIGNATURE_FIELDS, COUNTERSIGNATURE_TYPE, InvokeCountersignatureInvalid)
    return _sign(COUNTERSIGNATURE_TYPE, subject, buyer_key, now_ms, nonce)


def verify_countersignature(vc: Any, claims: InvokeClaims, *, buyer_key: VerifyKey | None = None) -> dict[str, Any]:
    """Verify a countersignature by the token's ``cnf`` key for this session; return its subject.

    ``buyer_key``: the key the buyer proved in the handshake (the node has it); without it the
    key is read from the issuer's ``did:key`` (the hub) and must have the ``cnf.jkt`` thumbprint.
    Whether ``receipt`` names a receipt the node issued is the caller's check (it has them).

    Raises:
        InvokeCountersignatureInvalid: malformed, signed by another key, or for another session.
    """
    try:
        if buyer_key is None:
            issuer = vc.get("issuer") if isinstance(vc, dict) else None
            buyer_key = VerifyKey.from_did_key(issuer if isinstance(issuer, str) else "")
        if jwk_thumbprint(buyer_key) != claims.cnf_jkt:
            raise InvokeCountersignatureInvalid("the countersignature is not by the token's cnf key")
        subject = _verify(vc, COUNTERSIGNATURE_TYPE, buyer_key, COUNTERSIGNATURE_FIELDS)
    except InvokeCountersignatureInvalid:
        raise
    except (InvokeReceiptInvalid, InvalidInput) as exc:
        raise InvokeCountersignatureInvalid(f"the countersignature does not verify: {exc.detail}") from exc
    expected = {"invocation_id": claims.sub, "jti": claims.jti, "device_id": claims.aud,
                "unit_price_minor": claims.unit_price_minor, "currency": claims.currency}
    wrong = sorted(name for name, value in expected.items() if subject[name] != value)
    if wrong or subject["cumulative_amount_minor"] != subject["cumulative_units"] * claims.unit_price_minor:
        raise InvokeCountersignatureInvalid(f"the countersignature is for another session (differs on {wrong})")
    return subject


# -- safety rejections ----------------------------------------------------------------------
def issue_rejection(subject: dict[str, Any], device_key: SigningKey, *, now_ms: int, nonce: str) -> dict[str, Any]:
    """Sign a rejection subject (:data:`REJECTION_FIELDS`; ``amount_minor`` is always 0)."""
    _check_fields(subject, REJECTION_FIELDS, REJECTION_TYPE, InvokeReceiptInvalid)
    return _sign(REJECTION_TYPE, subject, device_key, now_ms, nonce)


def verify_rejection(vc: Any, claims: InvokeClaims) -> dict[str, Any]:
    """Verify a node-signed rejection for this session; return its subject."""
    subject = _verify(vc, REJECTION_TYPE, claims.seller_key, REJECTION_FIELDS)
    if (subject["invocation_id"], subject["jti"], subject["device_id"]) != (claims.sub, claims.jti, claims.aud):
        raise InvokeReceiptReplayed("the rejection is for another session")
    return subject
