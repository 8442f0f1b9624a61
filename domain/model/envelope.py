"""The trace envelope: every node→hub message, a W3C VC signed by the device key.

A node writes what the hub must hear (a token bound, a receipt, a buyer's confirmation, a
refusal, a heartbeat; an invoke token bound, a session's final receipt, a safety rejection) to
its hash-chained outbox first (``node/outbox.py``); each time it
delivers an entry it wraps it in a fresh envelope::

    {"@context": ["https://www.w3.org/ns/credentials/v2", "https://aimarket.dev/ns/traces/v1"],
     "type": ["VerifiableCredential", "TraceEnvelope"],
     "issuer": "did:key:z6Mk…",                        the device key
     "credentialSubject": {"device_id": "<uuid>", "audience": "<hub_url>",
                           "entry": {"seq", "kind", "body", "prev_hash", "entry_hash", "created_ms"}},
     "proof": {"type": "DataIntegrityProof", "cryptosuite": "eddsa-jcs-2022",
               "created": "2027-01-15T08:00:00.123Z",   the send time, exactly 3 fraction digits
               "verificationMethod": "did:key:z6Mk…#z6Mk…", "proofPurpose": "assertionMethod",
               "nonce": "<base64url, 16..64 random bytes>", "@context": [...], "proofValue": "z…"}}

Everything is closed (no other member anywhere), the envelope's JCS is at most
``ENVELOPE_BYTES_MAX`` bytes and nests at most ``DEPTH_MAX`` levels, both checked before it is
read (raw bytes: before they are parsed, duplicate member names refused). The proof is
``eddsa-jcs-2022`` (``domain.model.vc``). ``entry_hash`` is recomputed from the entry
(:func:`entry_hash`), so a relayed entry cannot be altered under its hash.

Checks and their codes, in this order: shape ``trace_envelope_invalid``, signature
``trace_signature_invalid``, ``audience`` is the hub ``trace_wrong_audience``, ``created``
within ±``SKEW_MS`` of the hub clock ``trace_clock_skew`` (the envelope's time: an entry's own
``created_ms`` may be hours old, it was written while the hub was away), and the entry hash
``trace_entry_hash_mismatch``. Whether the key belongs to ``device_id`` (and is inside its
rotation grace at ``created``), the nonce (spent once) and the chain are the hub's to check
(``domain.app.traces``): they need its state. Golden vectors: ``tests/vectors/trace_envelope.json``.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.model.delivery import json_depth
from domain.model.errors import (
    InvalidInput,
    SignatureInvalid,
    TraceClockSkew,
    TraceEntryHashMismatch,
    TraceEnvelopeInvalid,
    TraceSignatureInvalid,
    TraceWrongAudience,
)
from domain.model.jcs import canonical_json, loads_strict, sha256_sri
from domain.model.keys import DID_KEY_PREFIX, SigningKey, VerifyKey
from domain.model.vc import DATA_INTEGRITY_PROOF, EDDSA_JCS_2022, sign_credential, verify_credential

CONTEXT = ["https://www.w3.org/ns/credentials/v2", "https://aimarket.dev/ns/traces/v1"]
ENVELOPE_TYPE = "TraceEnvelope"
KINDS = ("redemption", "receipt", "confirmation", "refusal", "heartbeat", "invoke_bound", "invoke_final",
         "invoke_rejection")
# A delivery receipt with its 1,024 byte intervals is ~40 KiB; an invoke_final envelope (final
# receipt + countersignature) 3.7 KiB, 7.6 KiB with every text field at its longest
# (measured by tests/traces/test_invoke_envelopes.py).
ENVELOPE_BYTES_MAX = 64 * 1024
# envelope > subject > entry > receipt > subject > intervals > interval (7); invoke_final:
# envelope > subject > entry > body > receipt > proof > @context (7)
DEPTH_MAX = 8
SKEW_MS = 30_000
NONCE_BYTES_MIN = 16  # 128 bits

OUTBOX_LABEL = b"aimarket/outbox/v1"
GENESIS = bytes(32)
MAX_INT = 2**53 - 1

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TEXT = re.compile(r"^[\x21-\x7e]{1,256}$")
_URL = re.compile(r"^https?://[\x21-\x7e]{1,2040}$")
_JTI = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_B64_32 = re.compile(r"^[A-Za-z0-9_-]{43}$")
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{22,86}$")  # 16..64 bytes, base64url unpadded
_CREATED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PROOF_FIELDS = {"type", "cryptosuite", "created", "verificationMethod", "proofPurpose", "nonce", "@context",
                 "proofValue"}
_ENVELOPE_FIELDS = {"@context", "type", "issuer", "credentialSubject", "proof"}
_VC_FIELDS = {"@context", "type", "issuer", "validFrom", "credentialSubject", "proof"}


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def entry_hash(prev_hash: bytes, seq: int, kind: str, body_jcs: bytes, created_ms: int) -> bytes:
    """The outbox chain hash of one entry::

        SHA-256( lp("aimarket/outbox/v1") || lp(prev_hash) || u64be(seq) || lp(kind)
                 || lp(JCS(body)) || u64be(created_ms) )      prev_hash of seq 1 = 32 zero bytes
    """
    return hashlib.sha256(_lp(OUTBOX_LABEL) + _lp(prev_hash) + struct.pack(">Q", seq) + _lp(kind.encode())
                          + _lp(body_jcs) + struct.pack(">Q", created_ms)).digest()


def format_created(sent_ms: int) -> str:
    """``sent_ms`` as the proof's ``created``: UTC, always three fraction digits."""
    moment = _EPOCH + timedelta(milliseconds=sent_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{sent_ms % 1000:03d}Z"


def parse_created(text: str) -> int:
    """The proof's ``created`` back to epoch milliseconds (TraceEnvelopeInvalid if malformed)."""
    if not isinstance(text, str) or not _CREATED.match(text):
        raise TraceEnvelopeInvalid("proof.created must be a UTC time with milliseconds, e.g. "
                                   "2027-01-15T08:00:00.123Z", param="proof.created")
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError:
        raise TraceEnvelopeInvalid("proof.created is not a valid time", param="proof.created") from None
    return (moment - _EPOCH) // timedelta(milliseconds=1)


# -- entry bodies, per kind (closed) ----------------------------------------------------------
def _match(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and bool(pattern.match(v))


def _int(low: int = 0, high: int = MAX_INT) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


def _credential(vc_type: str) -> Callable[[Any], bool]:
    """The shape of a delivery or invoke VC; its proof is verified where its signer is known (the hub)."""
    return lambda v: (isinstance(v, dict) and set(v) == _VC_FIELDS and v["type"] == ["VerifiableCredential", vc_type]
                      and isinstance(v["credentialSubject"], dict) and isinstance(v["proof"], dict))


def _or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


BODY_FIELDS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "redemption": {"jti": _match(_JTI), "purchase_id": _match(_TEXT), "listing_id": _match(_UUID),
                   "device_id": _match(_TEXT), "jkt": _match(_B64_32), "bound_at_ms": _int()},
    "refusal": {"jti": _match(_JTI), "purchase_id": _match(_TEXT), "jkt": _match(_B64_32), "code": _match(_CODE),
                "at_ms": _int()},
    "heartbeat": {"started_ms": _int(), "uptime_s": _int(), "outbox_pending": _int()},
    # compute (node/compute/store.py): the binding, the session's end, a safety rejection
    "invoke_bound": {"jti": _match(_JTI), "invocation_id": _match(_TEXT), "listing_id": _match(_UUID),
                     "device_id": _match(_TEXT), "jkt": _match(_B64_32), "bound_at_ms": _int()},
    "invoke_final": {"jti": _match(_JTI), "invocation_id": _match(_TEXT),
                     "receipt": _credential("InvocationReceipt"),
                     "countersignature": _or_null(_credential("InvocationCountersignature"))},
    "invoke_rejection": {"rejection": _credential("InvocationRejection")},
}
CREDENTIAL_BODIES = {"receipt": "DeliveryReceipt", "confirmation": "DeliveryConfirmation"}


def check_body(kind: str, body: Any) -> dict[str, Any]:
    """Raise TraceEnvelopeInvalid unless ``body`` is a well-formed body of ``kind``."""
    if kind in CREDENTIAL_BODIES:
        if not _credential(CREDENTIAL_BODIES[kind])(body):
            raise TraceEnvelopeInvalid(f"a {kind} entry carries a {CREDENTIAL_BODIES[kind]} credential",
                                       param="credentialSubject.entry.body")
        return body
    fields = BODY_FIELDS.get(kind)
    if fields is None:
        raise TraceEnvelopeInvalid(f"entry kind must be one of {list(KINDS)}", param="credentialSubject.entry.kind")
    if not isinstance(body, dict) or set(body) != set(fields):
        raise TraceEnvelopeInvalid(f"a {kind} body has exactly the fields {sorted(fields)}",
                                   param="credentialSubject.entry.body")
    for name, check in fields.items():
        if not check(body[name]):
            raise TraceEnvelopeInvalid(f"{kind} body field {name} is malformed",
                                       param=f"credentialSubject.entry.body.{name}")
    return body


# -- the envelope -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Entry:
    """One outbox entry as the envelope carries it."""

    seq: int
    kind: str
    body: dict[str, Any]
    prev_hash: str
    entry_hash: str
    created_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "body": self.body, "prev_hash": self.prev_hash,
                "entry_hash": self.entry_hash, "created_ms": self.created_ms}


@dataclass(frozen=True, slots=True)
class VerifiedEnvelope:
    """What :func:`verify_envelope` established (the key's owner, nonce and chain still to check)."""

    envelope: dict[str, Any]
    device_id: str
    audience: str
    key: VerifyKey
    nonce: str
    sent_ms: int
    entry: Entry
    body_digest: str


def issue_envelope(entry: Entry, *, device_id: str, audience: str, key: SigningKey, sent_ms: int,
                   nonce: str) -> dict[str, Any]:
    """Wrap ``entry`` in an envelope signed by the device ``key`` (a fresh ``nonce`` per send)."""
    unsigned = {"@context": list(CONTEXT), "type": ["VerifiableCredential", ENVELOPE_TYPE],
                "issuer": key.verify_key.did_key,
                "credentialSubject": {"device_id": device_id, "audience": audience, "entry": entry.to_json()}}
    envelope = sign_credential(unsigned, key, created=format_created(sent_ms), nonce=nonce)
    _shape(envelope)  # what we send must be what we accept
    return envelope


def parse_envelope(raw: bytes) -> dict[str, Any]:
    """Bounded strict parse of an envelope's bytes: size and depth first, no duplicate members."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) > ENVELOPE_BYTES_MAX:
        raise TraceEnvelopeInvalid(f"an envelope is at most {ENVELOPE_BYTES_MAX} bytes")
    if json_depth(bytes(raw)) > DEPTH_MAX:
        raise TraceEnvelopeInvalid(f"an envelope nests at most {DEPTH_MAX} levels")
    try:
        envelope = loads_strict(bytes(raw))
    except InvalidInput as exc:
        raise TraceEnvelopeInvalid(f"an envelope is strict JSON: {exc.detail}") from None
    if not isinstance(envelope, dict):
        raise TraceEnvelopeInvalid("an envelope is a JSON object")
    return envelope


def _bounded(envelope: Any) -> bytes:
    if not isinstance(envelope, dict):
        raise TraceEnvelopeInvalid("an envelope is a JSON object")
    try:
        jcs = canonical_json(envelope, allow_floats=False)
    except InvalidInput as exc:
        raise TraceEnvelopeInvalid(f"an envelope is canonical JSON without floats: {exc.detail}") from None
    if len(jcs) > ENVELOPE_BYTES_MAX or json_depth(jcs) > DEPTH_MAX:
        raise TraceEnvelopeInvalid(f"an envelope is at most {ENVELOPE_BYTES_MAX} bytes and {DEPTH_MAX} levels deep")
    return jcs


def _shape(envelope: Any) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Check the closed structure; return the subject, the entry and the send time (ms)."""
    _bounded(envelope)
    if set(envelope) != _ENVELOPE_FIELDS:
        raise TraceEnvelopeInvalid(f"an envelope has exactly the members {sorted(_ENVELOPE_FIELDS)}")
    if envelope["@context"] != CONTEXT or envelope["type"] != ["VerifiableCredential", ENVELOPE_TYPE]:
        raise TraceEnvelopeInvalid("not a TraceEnvelope (@context and type are fixed)")
    issuer, proof, subject = envelope["issuer"], envelope["proof"], envelope["credentialSubject"]
    if not isinstance(issuer, str) or not issuer.startswith(DID_KEY_PREFIX) or len(issuer) > 128:
        raise TraceEnvelopeInvalid("the issuer is the device key's did:key", param="issuer")
    if not isinstance(proof, dict) or set(proof) != _PROOF_FIELDS:
        raise TraceEnvelopeInvalid(f"the proof has exactly the members {sorted(_PROOF_FIELDS)}", param="proof")
    if (proof["type"], proof["cryptosuite"], proof["proofPurpose"]) != (DATA_INTEGRITY_PROOF, EDDSA_JCS_2022,
                                                                         "assertionMethod"):
        raise TraceEnvelopeInvalid("the proof is a DataIntegrityProof, eddsa-jcs-2022, assertionMethod", param="proof")
    if not isinstance(proof["nonce"], str) or not _NONCE.match(proof["nonce"]):
        raise TraceEnvelopeInvalid("proof.nonce is 16..64 random bytes, base64url", param="proof.nonce")
    if not isinstance(proof["verificationMethod"], str) or not proof["verificationMethod"].startswith(issuer + "#"):
        raise TraceEnvelopeInvalid("proof.verificationMethod is the issuer's key", param="proof.verificationMethod")
    sent_ms = parse_created(proof["created"])
    if not isinstance(subject, dict) or set(subject) != {"device_id", "audience", "entry"}:
        raise TraceEnvelopeInvalid("credentialSubject is {device_id, audience, entry}", param="credentialSubject")
    if not _match(_UUID)(subject["device_id"]):
        raise TraceEnvelopeInvalid("device_id is the device's uuid", param="credentialSubject.device_id")
    if not _match(_URL)(subject["audience"]):
        raise TraceEnvelopeInvalid("audience is the hub's URL", param="credentialSubject.audience")
    entry = subject["entry"]
    if not isinstance(entry, dict) or set(entry) != {"seq", "kind", "body", "prev_hash", "entry_hash", "created_ms"}:
        raise TraceEnvelopeInvalid("entry is {seq, kind, body, prev_hash, entry_hash, created_ms}",
                                   param="credentialSubject.entry")
    for name, check in (("seq", _int(1)), ("created_ms", _int()), ("prev_hash", _match(_HEX64)),
                        ("entry_hash", _match(_HEX64))):
        if not check(entry[name]):
            raise TraceEnvelopeInvalid(f"entry.{name} is malformed", param=f"credentialSubject.entry.{name}")
    if entry["kind"] not in KINDS:
        raise TraceEnvelopeInvalid(f"entry kind must be one of {list(KINDS)}", param="credentialSubject.entry.kind")
    check_body(entry["kind"], entry["body"])
    return subject, entry, sent_ms


def verify_envelope(envelope: Any, *, audience: str, now_ms: int, skew_ms: int = SKEW_MS) -> VerifiedEnvelope:
    """Verify an envelope (see the module docstring for the checks and their order).

    Args:
        envelope: the parsed envelope (from the hub's bounded JSON reader or :func:`parse_envelope`).
        audience: this hub's URL (``hub_url`` of its discovery document).
        now_ms: the hub's clock.
        skew_ms: how far ``proof.created`` may be from ``now_ms``.

    Raises:
        TraceEnvelopeInvalid, TraceSignatureInvalid, TraceWrongAudience, TraceClockSkew,
        TraceEntryHashMismatch.
    """
    subject, entry, sent_ms = _shape(envelope)
    try:
        proof = verify_credential(envelope)
    except (SignatureInvalid, InvalidInput) as exc:
        raise TraceSignatureInvalid(f"the envelope's proof does not verify: {exc.detail}") from None
    if subject["audience"] != audience:
        raise TraceWrongAudience("the envelope is addressed to another hub", param="credentialSubject.audience")
    if abs(sent_ms - now_ms) > skew_ms:
        raise TraceClockSkew(f"proof.created is more than {skew_ms // 1000} s from the hub clock; check the node's "
                             "clock", param="proof.created")
    body_jcs = canonical_json(entry["body"], allow_floats=False)
    expected = entry_hash(bytes.fromhex(entry["prev_hash"]), entry["seq"], entry["kind"], body_jcs,
                          entry["created_ms"]).hex()
    if expected != entry["entry_hash"]:
        raise TraceEntryHashMismatch("entry_hash is not the hash of this entry", param="credentialSubject.entry")
    return VerifiedEnvelope(envelope=envelope, device_id=subject["device_id"], audience=audience, key=proof.verify_key,
                            nonce=envelope["proof"]["nonce"], sent_ms=sent_ms,
                            entry=Entry(entry["seq"], entry["kind"], entry["body"], entry["prev_hash"],
                                        entry["entry_hash"], entry["created_ms"]),
                            body_digest=sha256_sri(body_jcs))


def readable_facts(envelope: Any) -> dict[str, Any]:
    """What can be read from an envelope that was refused (for the behaviour signal), unverified."""
    facts: dict[str, Any] = {"kind": "envelope", "seq": None, "entry_hash": None}
    subject = envelope.get("credentialSubject") if isinstance(envelope, dict) else None
    entry = subject.get("entry") if isinstance(subject, dict) else None
    if isinstance(entry, dict):
        if entry.get("kind") in KINDS:
            facts["kind"] = entry["kind"]
        if _int(1)(entry.get("seq")):
            facts["seq"] = entry["seq"]
        if _match(_HEX64)(entry.get("entry_hash")):
            facts["entry_hash"] = entry["entry_hash"]
    return facts
