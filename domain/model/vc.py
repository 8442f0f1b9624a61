"""W3C Verifiable Credential Data Integrity proofs: the node <-> hub trust channel.

Two proof forms are handled.

``DataIntegrityProof`` / ``eddsa-jcs-2022`` (W3C Recommendation "Data Integrity EdDSA
Cryptosuites v1.0", §3.3), implemented exactly:

1. ``proofConfig`` = the proof options (``type``, ``cryptosuite``, ``created``,
   ``verificationMethod``, ``proofPurpose``, optional ``nonce``) *without* ``proofValue``,
   with ``@context`` set to the document's ``@context`` when the document has one;
2. ``hashData = SHA-256(JCS(proofConfig)) || SHA-256(JCS(unsecuredDocument))`` (64 bytes,
   RFC 8785 JCS);
3. ``proofValue = "z" + base58btc(Ed25519.sign(hashData))``;
4. the secured document is the unsecured one plus ``proof = proofConfig + proofValue``.

``tests/vectors/vc_di_eddsa_jcs_2022.json`` holds the specification's own example (its key
pair, credential, proof options, intermediate hashes and ``proofValue``) and the tests
reproduce it byte for byte.

``Ed25519Signature2020`` (the seed's name; legacy): **ours, not interoperable.** The real
suite canonicalises with RDF Dataset Canonicalization (JSON-LD expansion + RDFC-1.0), which
we do not do (it needs a JSON-LD processor and context documents). Our nodes use the same
JCS construction as above with ``type: "Ed25519Signature2020"`` and no ``cryptosuite``;
``@context`` is not repeated in the proof, so the document's ``@context`` is put into the
proof configuration before hashing (the same rule as an ``eddsa-jcs-2022`` proof that omits
``@context``). A third-party Ed25519Signature2020 proof will therefore *not* verify here:
it fails closed with ``SignatureInvalid``.

Deliberate strictness beyond the specification (each is a subset of spec-valid proofs):

* a proof's ``@context``, when present, must *equal* the document's ``@context``; the spec
  lets a document append contexts after signing, which would be an unsigned change here;
* when the document's ``issuer`` (string or ``{"id": …}``) is a ``did:key``, it must be the
  key that made the proof;
* one proof per document (no proof sets / chains), Ed25519 only.

Key resolution: the verification method must be ``did:key:z6Mk…#z6Mk…`` (or the bare DID);
its key is decoded from the identifier itself, no network. Other methods (``https://…``)
verify only when the caller passes ``expected_key``. ``expected_key``, when given, must
match the resolved key.

Not checked here, and the caller's job: the freshness of ``created`` / ``validFrom`` /
``validUntil`` against a clock (replay window), the ``nonce`` against a seen-nonce store,
and whether the key belongs to an enrolled device. :class:`VerifiedProof` exposes the parsed
``created`` and the ``nonce`` for that.

Errors: any change to the document or the proof gives ``SignatureInvalid``; a structure that
is not a proof we understand (missing fields, wrong types, unknown suite, unresolvable
method) gives ``InvalidInput``. Nothing here returns False.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import base58

from domain.model.errors import InvalidInput, SignatureInvalid
from domain.model.jcs import canonical_json
from domain.model.keys import DID_KEY_PREFIX, SIGNATURE_BYTES, SigningKey, VerifyKey

DATA_INTEGRITY_PROOF = "DataIntegrityProof"
EDDSA_JCS_2022 = "eddsa-jcs-2022"
ED25519_SIGNATURE_2020 = "Ed25519Signature2020"
PROOF_TYPES = (DATA_INTEGRITY_PROOF, ED25519_SIGNATURE_2020)

_UTC_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
_XSD_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    """What a successful :func:`verify_credential` established.

    Attributes:
        verify_key: the Ed25519 key that made the proof.
        verification_method: the proof's ``verificationMethod`` as written.
        created: the proof's ``created`` as an aware UTC datetime, or None if absent.
        nonce: the proof's ``nonce``, or None.
        cryptosuite: ``"eddsa-jcs-2022"``, or None for ``Ed25519Signature2020``.
        type: ``"DataIntegrityProof"`` or ``"Ed25519Signature2020"``.
        proof_purpose: the proof's ``proofPurpose``.
    """

    verify_key: VerifyKey
    verification_method: str
    created: datetime | None
    nonce: str | None
    cryptosuite: str | None
    type: str
    proof_purpose: str


def xsd_datetime(moment: datetime) -> str:
    """Format an aware datetime as an XMLSchema dateTime in UTC: ``2024-05-01T12:00:00Z``.

    Microseconds are kept only when non-zero.
    """
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise InvalidInput("an aware datetime is required")
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_xsd_datetime(text: str) -> datetime:
    """Parse an XMLSchema dateTime that carries a time zone into an aware UTC datetime.

    Raises:
        InvalidInput: not a dateTime, or no time zone.
    """
    match = _XSD_DATETIME.match(text) if isinstance(text, str) else None
    if not match:
        raise InvalidInput("expected an XMLSchema dateTime with a time zone, e.g. 2024-05-01T12:00:00Z")
    base, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]  # keep at most microseconds
    try:
        parsed = datetime.fromisoformat(base + fraction + ("+00:00" if zone == "Z" else zone))
    except ValueError as exc:
        raise InvalidInput(f"invalid dateTime {text!r}") from exc
    return parsed.astimezone(UTC)


def _hash_data(proof_config: dict[str, Any], document: dict[str, Any]) -> bytes:
    return hashlib.sha256(canonical_json(proof_config)).digest() + hashlib.sha256(canonical_json(document)).digest()


def sign_credential(
    unsigned: dict[str, Any],
    key: SigningKey,
    *,
    created: str,
    nonce: str | None,
    verification_method: str | None = None,
    proof_purpose: str = "assertionMethod",
    proof_type: str = DATA_INTEGRITY_PROOF,
) -> dict[str, Any]:
    """Return a copy of ``unsigned`` secured with an Ed25519 JCS Data Integrity proof.

    Args:
        unsigned: the credential (a JSON object without ``proof``); not modified.
        key: the issuer's signing key.
        created: proof creation time, XMLSchema dateTime in UTC with ``Z``
            (see :func:`xsd_datetime`).
        nonce: a fresh random string for replay protection, or None to omit it.
        verification_method: defaults to the key's ``did:key:z…#z…``.
        proof_purpose: ``proofPurpose``; ``assertionMethod`` for credentials.
        proof_type: ``"DataIntegrityProof"`` (``eddsa-jcs-2022``, default) or
            ``"Ed25519Signature2020"`` (our JCS variant, legacy; see module docstring).

    Raises:
        InvalidInput: ``unsigned`` is not an object, already has a proof, is not
            canonicalisable, or an option is malformed.
    """
    if not isinstance(unsigned, dict):
        raise InvalidInput("a credential must be a JSON object")
    if "proof" in unsigned:
        raise InvalidInput("credential already has a proof; proof sets are not supported")
    if not isinstance(key, SigningKey):
        raise InvalidInput("key must be a SigningKey")
    if not isinstance(created, str) or not _UTC_DATETIME.match(created):
        raise InvalidInput("created must be an XMLSchema dateTime in UTC, e.g. 2024-05-01T12:00:00Z")
    parse_xsd_datetime(created)
    if nonce is not None and (not isinstance(nonce, str) or not nonce):
        raise InvalidInput("nonce must be a non-empty string or None")
    if not isinstance(proof_purpose, str) or not proof_purpose:
        raise InvalidInput("proof_purpose must be a non-empty string")
    vm = key.verify_key.verification_method if verification_method is None else verification_method
    if not isinstance(vm, str) or not vm:
        raise InvalidInput("verification_method must be a non-empty string")
    if vm.startswith(DID_KEY_PREFIX) and VerifyKey.from_did_key(vm) != key.verify_key:
        raise InvalidInput("verification_method names a different did:key than the signing key")

    document = copy.deepcopy(unsigned)
    proof_config: dict[str, Any] = {"type": proof_type}
    if proof_type == DATA_INTEGRITY_PROOF:
        proof_config["cryptosuite"] = EDDSA_JCS_2022
    elif proof_type != ED25519_SIGNATURE_2020:
        raise InvalidInput(f"unsupported proof type {proof_type!r}; use one of {PROOF_TYPES}")
    proof_config["created"] = created
    proof_config["verificationMethod"] = vm
    proof_config["proofPurpose"] = proof_purpose
    if nonce is not None:
        proof_config["nonce"] = nonce
    if "@context" in document:
        proof_config["@context"] = copy.deepcopy(document["@context"])

    signature = key.sign(_hash_data(proof_config, document))
    proof = dict(proof_config)
    if proof_type == ED25519_SIGNATURE_2020:
        # Legacy shape: the proof relies on the document's @context (re-added when verifying).
        proof.pop("@context", None)
    proof["proofValue"] = "z" + base58.b58encode(signature).decode("ascii")
    document["proof"] = proof
    return document


def _optional_str(proof: dict[str, Any], name: str) -> str | None:
    value = proof.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"proof.{name} must be a string", param=f"proof.{name}")
    return value


def _required_str(proof: dict[str, Any], name: str) -> str:
    value = proof.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"proof.{name} is required and must be a string", param=f"proof.{name}")
    return value


def _decode_proof_value(text: str) -> bytes:
    if not text.startswith("z"):
        raise SignatureInvalid("proofValue is not base58btc multibase")
    try:
        signature = base58.b58decode(text[1:])
    except ValueError as exc:
        raise SignatureInvalid("proofValue is not valid base58btc") from exc
    if len(signature) != SIGNATURE_BYTES or "z" + base58.b58encode(signature).decode("ascii") != text:
        raise SignatureInvalid("proofValue is not a 64-byte Ed25519 signature")
    return signature


def _issuer_id(document: dict[str, Any]) -> str | None:
    issuer = document.get("issuer")
    if isinstance(issuer, dict):
        issuer = issuer.get("id")
    return issuer if isinstance(issuer, str) else None


def verify_credential(
    secured: dict[str, Any],
    *,
    expected_key: VerifyKey | None = None,
    expected_proof_purpose: str = "assertionMethod",
) -> VerifiedProof:
    """Verify the Ed25519 JCS Data Integrity proof on ``secured``.

    Args:
        secured: the credential with its ``proof``.
        expected_key: if given, the proof must have been made by this key (and a
            non-did:key verification method is then allowed and resolved to it).
        expected_proof_purpose: the ``proofPurpose`` the caller relies on.

    Returns:
        The verified proof's facts. Freshness of ``created`` and ``nonce`` replay are the
        caller's to check.

    Raises:
        SignatureInvalid: the document or proof was altered, the key is not the expected
            one, the issuer is another did:key, or the proof purpose differs.
        InvalidInput: the proof is missing or malformed, of an unsupported type/suite, or its
            verification method cannot be resolved.
    """
    if not isinstance(secured, dict):
        raise InvalidInput("a credential must be a JSON object")
    proof = secured.get("proof")
    if isinstance(proof, list):
        raise InvalidInput("proof sets are not supported; expected a single proof object", param="proof")
    if not isinstance(proof, dict):
        raise InvalidInput("credential has no proof object", param="proof")

    proof_type = _required_str(proof, "type")
    cryptosuite = _optional_str(proof, "cryptosuite")
    if proof_type == DATA_INTEGRITY_PROOF:
        if cryptosuite != EDDSA_JCS_2022:
            raise InvalidInput(f"unsupported cryptosuite {cryptosuite!r}; expected {EDDSA_JCS_2022}")
    elif proof_type == ED25519_SIGNATURE_2020:
        if cryptosuite is not None:
            raise InvalidInput("Ed25519Signature2020 proofs carry no cryptosuite")
    else:
        raise InvalidInput(f"unsupported proof type {proof_type!r}; expected one of {PROOF_TYPES}")
    proof_value = _required_str(proof, "proofValue")
    vm = _required_str(proof, "verificationMethod")
    purpose = _required_str(proof, "proofPurpose")
    created_text = _optional_str(proof, "created")
    created = parse_xsd_datetime(created_text) if created_text is not None else None
    nonce = _optional_str(proof, "nonce")
    if expected_key is not None and not isinstance(expected_key, VerifyKey):
        raise InvalidInput("expected_key must be a VerifyKey")

    if vm.startswith(DID_KEY_PREFIX):
        verify_key = VerifyKey.from_did_key(vm)
        if expected_key is not None and verify_key != expected_key:
            raise SignatureInvalid("proof was made by another key than the expected one")
    elif expected_key is not None:
        verify_key = expected_key
    else:
        raise InvalidInput(
            f"cannot resolve verification method {vm!r}: only did:key is resolved; pass expected_key",
            param="proof.verificationMethod",
        )

    issuer = _issuer_id(secured)
    if issuer is not None and issuer.startswith(DID_KEY_PREFIX):
        if VerifyKey.from_did_key(issuer) != verify_key:
            raise SignatureInvalid("issuer is a different did:key than the proof's key")

    if purpose != expected_proof_purpose:
        raise SignatureInvalid(f"proof purpose {purpose!r} is not {expected_proof_purpose!r}")

    unsecured = {name: value for name, value in secured.items() if name != "proof"}
    proof_config = {name: value for name, value in proof.items() if name != "proofValue"}
    if "@context" in proof_config:
        if "@context" not in unsecured or canonical_json(proof_config["@context"]) != canonical_json(
            unsecured["@context"]
        ):
            raise SignatureInvalid("document @context differs from the signed proof @context")
    elif "@context" in unsecured:
        proof_config["@context"] = unsecured["@context"]

    signature = _decode_proof_value(proof_value)
    verify_key.verify(_hash_data(proof_config, unsecured), signature)
    return VerifiedProof(
        verify_key=verify_key,
        verification_method=vm,
        created=created,
        nonce=nonce,
        cryptosuite=cryptosuite,
        type=proof_type,
        proof_purpose=purpose,
    )
