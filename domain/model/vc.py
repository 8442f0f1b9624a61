"""W3C Verifiable Credential Data Integrity proofs: the node <-> hub trust channel.

Three Ed25519 proof suites, each implemented exactly as specified (W3C Recommendation "Data
Integrity EdDSA Cryptosuites v1.0" and the Ed25519Signature2020 suite), for signing and for
verifying. They share one construction and differ in the canonicalisation and the proof shape:

1. ``proofConfig`` = the proof options (``type``, ``cryptosuite`` when the suite has one,
   ``created``, ``verificationMethod``, ``proofPurpose``, optional ``nonce``) *without*
   ``proofValue``, with ``@context`` set to the document's ``@context``;
2. ``hashData = SHA-256(canon(proofConfig)) || SHA-256(canon(unsecuredDocument))`` (64 bytes);
3. ``proofValue = "z" + base58btc(Ed25519.sign(hashData))``; the secured document is the
   unsecured one plus ``proof``.

* ``eddsa-jcs-2022``: type ``DataIntegrityProof``, cryptosuite ``eddsa-jcs-2022``; canon = RFC
  8785 JCS; the proof carries the ``@context``.
* ``eddsa-rdfc-2022``: type ``DataIntegrityProof``, cryptosuite ``eddsa-rdfc-2022``; canon =
  RDFC-1.0 (URDNA2015) canonical N-Quads; the proof carries no ``@context``.
* ``Ed25519Signature2020``: type ``Ed25519Signature2020``, no cryptosuite; canon = RDFC-1.0
  canonical N-Quads; the proof carries no ``@context``.

RDF canonicalisation (``domain.model.vc_rdfc``) runs offline on bundled contexts and in safe
mode: an undefined term, an unknown context, a refused control character or an oversized graph
is refused before anything is hashed. An ``Ed25519Signature2020`` document must itself include
the ``https://w3id.org/security/suites/ed25519-2020/v1`` context (the suite defines its terms
there); an RDF proof's type must be defined by the document's contexts. Any other proof type or
cryptosuite is refused with ``unsupported_cryptosuite``, never checked loosely.

``tests/vectors/vc_di_eddsa_*.json`` and ``vc_ed25519signature2020.json`` hold the W3C test
vectors; the tests verify them and reproduce their ``proofValue`` byte for byte.

Deliberate strictness beyond the specifications (each is a subset of spec-valid proofs):

* a proof's ``@context``, when present, must *equal* the document's ``@context``; the spec
  lets a document append contexts after signing, which would be an unsigned change here;
* when the document's ``issuer`` (string or ``{"id": …}``) is a ``did:key``, it must be the
  key that made the proof (``bind_issuer=False`` lifts this for third-party documents);
* one proof per document (no proof sets / chains), Ed25519 only.

Key resolution: the verification method must be ``did:key:z6Mk…#z6Mk…`` (or the bare DID);
its key is decoded from the identifier itself, no network. Other methods (``https://…``)
verify only when the caller passes ``expected_key``. ``expected_key``, when given, must
match the resolved key.

Not checked here, and the caller's job: the freshness of ``created`` / ``validFrom`` /
``validUntil`` against a clock (replay window), the ``nonce`` against a seen-nonce store,
and whether the key belongs to an enrolled device. :class:`VerifiedProof` exposes the parsed
``created`` and the ``nonce`` for that.

Errors: any change to the signed document or proof gives ``SignatureInvalid``; a structure
that is not a proof we understand (missing fields, wrong types, unresolvable method) gives
``InvalidInput``; an unknown suite ``UnsupportedCryptosuite``; the RDF safe-mode refusals their
own ``InvalidInput`` subclasses (``domain.model.errors``, "credentials"). Nothing returns False.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import base58

from domain.model.errors import (
    CredentialContextMissing,
    InvalidInput,
    SignatureInvalid,
    UnsupportedCryptosuite,
)
from domain.model.jcs import canonical_json
from domain.model.keys import DID_KEY_PREFIX, SIGNATURE_BYTES, SigningKey, VerifyKey
from domain.model.vc_datetime import UTC_DATETIME, parse_xsd_datetime, xsd_datetime  # noqa: F401 (re-exported)

DATA_INTEGRITY_PROOF = "DataIntegrityProof"
EDDSA_JCS_2022 = "eddsa-jcs-2022"
EDDSA_RDFC_2022 = "eddsa-rdfc-2022"
ED25519_SIGNATURE_2020 = "Ed25519Signature2020"
PROOF_TYPES = (DATA_INTEGRITY_PROOF, ED25519_SIGNATURE_2020)
SUITES = (EDDSA_JCS_2022, EDDSA_RDFC_2022, ED25519_SIGNATURE_2020)
"""Suite names: a Data Integrity cryptosuite, or the proof type of a suite that has none."""

ED25519_2020_V1 = "https://w3id.org/security/suites/ed25519-2020/v1"
_SECURITY = "https://w3id.org/security#"
_RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"
_PROOF_TYPE_IRI = {EDDSA_RDFC_2022: _SECURITY + DATA_INTEGRITY_PROOF,
                   ED25519_SIGNATURE_2020: _SECURITY + ED25519_SIGNATURE_2020}

Contexts = Mapping[str, Mapping[str, Any]] | None


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    """What a successful :func:`verify_credential` established.

    Attributes:
        verify_key: the Ed25519 key that made the proof.
        verification_method: the proof's ``verificationMethod`` as written.
        created: the proof's ``created`` as an aware UTC datetime, or None if absent.
        nonce: the proof's ``nonce``, or None.
        cryptosuite: ``"eddsa-jcs-2022"`` or ``"eddsa-rdfc-2022"``, or None for
            ``Ed25519Signature2020``.
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

    @property
    def suite(self) -> str:
        """One of :data:`SUITES`: the cryptosuite, or the proof type when it has none."""
        return self.cryptosuite or self.type


def suite_of(proof_type: Any, cryptosuite: Any) -> str:
    """The suite a proof's ``type`` and ``cryptosuite`` name.

    Raises:
        UnsupportedCryptosuite: any combination but the three implemented suites.
    """
    if proof_type == DATA_INTEGRITY_PROOF and cryptosuite in (EDDSA_JCS_2022, EDDSA_RDFC_2022):
        return str(cryptosuite)
    if proof_type == ED25519_SIGNATURE_2020 and cryptosuite is None:
        return ED25519_SIGNATURE_2020
    if proof_type == ED25519_SIGNATURE_2020:
        raise UnsupportedCryptosuite("Ed25519Signature2020 proofs carry no cryptosuite", param="proof.cryptosuite")
    if proof_type == DATA_INTEGRITY_PROOF:
        raise UnsupportedCryptosuite(f"unsupported cryptosuite {cryptosuite!r}; expected one of "
                                     f"{(EDDSA_JCS_2022, EDDSA_RDFC_2022)}", param="proof.cryptosuite")
    raise UnsupportedCryptosuite(f"unsupported proof type {proof_type!r}; expected one of {PROOF_TYPES}",
                                 param="proof.type")


def _rdf_canon(suite: str, document: dict[str, Any], what: str, contexts: Contexts) -> str:
    # Imported here: pyld, lxml and the bundled contexts cost ~150 ms to load, which the
    # eddsa-jcs-2022 path (every node message) never needs.
    from domain.model.vc_rdfc import canonical_nquads

    if "@context" not in document:
        raise CredentialContextMissing(f"an {suite} {what} must carry an @context")
    return canonical_nquads(document, contexts=contexts)


def _check_suite_context(suite: str, document: dict[str, Any]) -> None:
    if suite != ED25519_SIGNATURE_2020:
        return
    context = document.get("@context")
    names = context if isinstance(context, list) else [context]
    if ED25519_2020_V1 not in names:
        raise CredentialContextMissing(f"an Ed25519Signature2020 credential must include the {ED25519_2020_V1} "
                                       "context", param="@context")


def _hash_data(suite: str, proof_config: dict[str, Any], document: dict[str, Any], contexts: Contexts) -> bytes:
    if suite == EDDSA_JCS_2022:
        return hashlib.sha256(canonical_json(proof_config)).digest() + hashlib.sha256(canonical_json(document)).digest()
    _check_suite_context(suite, document)
    canonical_proof = _rdf_canon(suite, proof_config, "proof", contexts)
    if f"<{_RDF_TYPE}> <{_PROOF_TYPE_IRI[suite]}> .\n" not in canonical_proof:
        raise CredentialContextMissing(f"the credential's @context does not define the proof type of {suite}",
                                       param="@context")
    canonical_document = _rdf_canon(suite, document, "credential", contexts)
    return (hashlib.sha256(canonical_proof.encode("utf-8")).digest()
            + hashlib.sha256(canonical_document.encode("utf-8")).digest())


def _check_sign_options(key: SigningKey, created: Any, nonce: Any, proof_purpose: Any, vm: Any) -> None:
    if not isinstance(created, str) or not UTC_DATETIME.match(created):
        raise InvalidInput("created must be an XMLSchema dateTime in UTC, e.g. 2024-05-01T12:00:00Z")
    parse_xsd_datetime(created)
    if nonce is not None and (not isinstance(nonce, str) or not nonce):
        raise InvalidInput("nonce must be a non-empty string or None")
    if not isinstance(proof_purpose, str) or not proof_purpose:
        raise InvalidInput("proof_purpose must be a non-empty string")
    if not isinstance(vm, str) or not vm:
        raise InvalidInput("verification_method must be a non-empty string")
    if vm.startswith(DID_KEY_PREFIX) and VerifyKey.from_did_key(vm) != key.verify_key:
        raise InvalidInput("verification_method names a different did:key than the signing key")


def create_proof(
    document: dict[str, Any],
    key: SigningKey,
    *,
    created: str,
    nonce: str | None,
    verification_method: str | None = None,
    proof_purpose: str = "assertionMethod",
    proof_type: str = DATA_INTEGRITY_PROOF,
    cryptosuite: str | None = None,
    contexts: Contexts = None,
    proof_id: str | None = None,
    previous_proof: str | list[str] | None = None,
) -> dict[str, Any]:
    """The proof object over ``document`` exactly as hashed (the caller attaches it).

    ``document`` is what the proof covers: the credential without proofs, or for a chained
    proof the credential with ``proof`` set to the proofs ``previous_proof`` names
    (``domain.model.vc_sets``). ``proof_id`` and ``previous_proof`` become the proof's ``id``
    and ``previousProof`` options. The other arguments are those of :func:`sign_credential`.
    """
    if proof_type == DATA_INTEGRITY_PROOF and cryptosuite is None:
        cryptosuite = EDDSA_JCS_2022
    suite = suite_of(proof_type, cryptosuite)
    if not isinstance(key, SigningKey):
        raise InvalidInput("key must be a SigningKey")
    vm = key.verify_key.verification_method if verification_method is None else verification_method
    _check_sign_options(key, created, nonce, proof_purpose, vm)
    if proof_id is not None and (not isinstance(proof_id, str) or not proof_id):
        raise InvalidInput("proof_id must be a non-empty string or None")

    proof_config: dict[str, Any] = {"type": proof_type}
    if proof_id is not None:
        proof_config["id"] = proof_id
    if cryptosuite is not None:
        proof_config["cryptosuite"] = cryptosuite
    proof_config.update(created=created, verificationMethod=vm, proofPurpose=proof_purpose)
    if previous_proof is not None:
        proof_config["previousProof"] = copy.deepcopy(previous_proof)
    if nonce is not None:
        proof_config["nonce"] = nonce
    if "@context" in document:
        proof_config["@context"] = copy.deepcopy(document["@context"])

    signature = key.sign(_hash_data(suite, proof_config, document, contexts))
    proof = dict(proof_config)
    if suite != EDDSA_JCS_2022:
        # The RDF suites' proofs rely on the document's @context (re-added when verifying),
        # as the W3C examples and vectors show them.
        proof.pop("@context", None)
    proof["proofValue"] = "z" + base58.b58encode(signature).decode("ascii")
    return proof


def sign_credential(
    unsigned: dict[str, Any],
    key: SigningKey,
    *,
    created: str,
    nonce: str | None,
    verification_method: str | None = None,
    proof_purpose: str = "assertionMethod",
    proof_type: str = DATA_INTEGRITY_PROOF,
    cryptosuite: str | None = None,
    contexts: Contexts = None,
) -> dict[str, Any]:
    """Return a copy of ``unsigned`` secured with an Ed25519 Data Integrity proof.

    Args:
        unsigned: the credential (a JSON object without ``proof``); not modified.
        key: the issuer's signing key.
        created: proof creation time, XMLSchema dateTime in UTC with ``Z``
            (see :func:`xsd_datetime`).
        nonce: a fresh random string for replay protection, or None to omit it.
        verification_method: defaults to the key's ``did:key:z…#z…``.
        proof_purpose: ``proofPurpose``; ``assertionMethod`` for credentials.
        proof_type: ``"DataIntegrityProof"`` (default) or ``"Ed25519Signature2020"``.
        cryptosuite: for ``DataIntegrityProof``: ``"eddsa-jcs-2022"`` (the default) or
            ``"eddsa-rdfc-2022"``; must be None for ``Ed25519Signature2020``.
        contexts: extra JSON-LD context documents by URL for the RDF suites.

    Raises:
        UnsupportedCryptosuite: another proof type or cryptosuite.
        InvalidInput: ``unsigned`` is not an object, already has a proof, is not
            canonicalisable (the RDF safe-mode errors included), or an option is malformed.
    """
    if not isinstance(unsigned, dict):
        raise InvalidInput("a credential must be a JSON object")
    if "proof" in unsigned:
        raise InvalidInput("credential already has a proof; add one with domain.model.vc_sets.add_proof")
    document = copy.deepcopy(unsigned)
    document["proof"] = create_proof(
        document, key, created=created, nonce=nonce, verification_method=verification_method,
        proof_purpose=proof_purpose, proof_type=proof_type, cryptosuite=cryptosuite, contexts=contexts)
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


def issuer_id(document: dict[str, Any]) -> str | None:
    """The credential's issuer id (``issuer`` as a string or ``issuer.id``), or None."""
    issuer = document.get("issuer")
    if isinstance(issuer, dict):
        issuer = issuer.get("id")
    return issuer if isinstance(issuer, str) else None


def _resolve_key(vm: str, expected_key: VerifyKey | None) -> VerifyKey:
    if expected_key is not None and not isinstance(expected_key, VerifyKey):
        raise InvalidInput("expected_key must be a VerifyKey")
    if vm.startswith(DID_KEY_PREFIX):
        verify_key = VerifyKey.from_did_key(vm)
        if expected_key is not None and verify_key != expected_key:
            raise SignatureInvalid("proof was made by another key than the expected one")
        return verify_key
    if expected_key is not None:
        return expected_key
    raise InvalidInput(f"cannot resolve verification method {vm!r}: only did:key is resolved; give its key "
                       "(expected_key, --key)",
                       param="proof.verificationMethod")


def check_issuer(secured: dict[str, Any], verify_key: VerifyKey) -> None:
    """Refuse a did:key ``issuer`` that is not ``verify_key`` (other issuers are not looked at)."""
    issuer = issuer_id(secured)
    if issuer is None or not issuer.startswith(DID_KEY_PREFIX):
        return
    try:
        same = VerifyKey.from_did_key(issuer) == verify_key
    except InvalidInput:
        same = False  # another key type (a P-256 did:key, ...) cannot be the Ed25519 signer
    if not same:
        raise SignatureInvalid("issuer is a different did:key than the proof's key")


def verify_proof(
    document: dict[str, Any],
    proof: Any,
    *,
    expected_key: VerifyKey | None = None,
    expected_proof_purpose: str = "assertionMethod",
    contexts: Contexts = None,
    suites: tuple[str, ...] = SUITES,
) -> VerifiedProof:
    """Verify one proof object over ``document`` (what it covers, without the proof itself).

    The building block of :func:`verify_credential` and of proof sets and chains
    (``domain.model.vc_sets``); the issuer is not looked at here. Raises as
    :func:`verify_credential`.
    """
    if not isinstance(proof, dict):
        raise InvalidInput("a proof must be a JSON object", param="proof")
    proof_type = _required_str(proof, "type")
    cryptosuite = _optional_str(proof, "cryptosuite")
    suite = suite_of(proof_type, cryptosuite)
    if suite not in suites:
        raise UnsupportedCryptosuite(f"{suite} proofs are not accepted here; expected one of {suites}",
                                     param="proof.cryptosuite" if cryptosuite else "proof.type")
    proof_value = _required_str(proof, "proofValue")
    vm = _required_str(proof, "verificationMethod")
    purpose = _required_str(proof, "proofPurpose")
    created_text = _optional_str(proof, "created")
    created = parse_xsd_datetime(created_text) if created_text is not None else None
    nonce = _optional_str(proof, "nonce")
    verify_key = _resolve_key(vm, expected_key)
    if purpose != expected_proof_purpose:
        raise SignatureInvalid(f"proof purpose {purpose!r} is not {expected_proof_purpose!r}")

    proof_config = {name: value for name, value in proof.items() if name != "proofValue"}
    if "@context" in proof_config:
        if "@context" not in document or canonical_json(proof_config["@context"]) != canonical_json(
            document["@context"]
        ):
            raise SignatureInvalid("document @context differs from the signed proof @context")
    elif "@context" in document:
        proof_config["@context"] = document["@context"]

    signature = _decode_proof_value(proof_value)
    verify_key.verify(_hash_data(suite, proof_config, document, contexts), signature)
    return VerifiedProof(
        verify_key=verify_key,
        verification_method=vm,
        created=created,
        nonce=nonce,
        cryptosuite=cryptosuite,
        type=proof_type,
        proof_purpose=purpose,
    )


def verify_credential(
    secured: dict[str, Any],
    *,
    expected_key: VerifyKey | None = None,
    expected_proof_purpose: str = "assertionMethod",
    contexts: Contexts = None,
    bind_issuer: bool = True,
    suites: tuple[str, ...] = SUITES,
) -> VerifiedProof:
    """Verify the Ed25519 Data Integrity proof on ``secured`` (any of :data:`SUITES`).

    Args:
        secured: the credential with its ``proof`` (one object; proof sets and chains:
            ``domain.model.vc_sets.verify_proof_set``).
        expected_key: if given, the proof must have been made by this key (and a
            non-did:key verification method is then allowed and resolved to it).
        expected_proof_purpose: the ``proofPurpose`` the caller relies on.
        contexts: extra JSON-LD context documents by URL for the RDF suites.
        bind_issuer: a did:key ``issuer`` must be the signing key (default). False for a
            third party's credential whose issuer is not its signer.
        suites: the suites accepted; a caller that takes only ``eddsa-jcs-2022`` passes
            ``(EDDSA_JCS_2022,)`` so that nobody can make it canonicalise RDF (refused up
            front as ``unsupported_cryptosuite``).

    Returns:
        The verified proof's facts. Freshness of ``created`` and ``nonce`` replay are the
        caller's to check.

    Raises:
        SignatureInvalid: the document or proof was altered, the key is not the expected
            one, the issuer is another did:key, or the proof purpose differs.
        UnsupportedCryptosuite: the proof's type / cryptosuite is none of :data:`SUITES`.
        InvalidInput: the proof is missing or malformed, its verification method cannot be
            resolved, or the credential is refused by the RDF safe mode.
    """
    if not isinstance(secured, dict):
        raise InvalidInput("a credential must be a JSON object")
    proof = secured.get("proof")
    if isinstance(proof, list):
        raise InvalidInput("proof sets are not supported here; expected a single proof object", param="proof")
    if not isinstance(proof, dict):
        raise InvalidInput("credential has no proof object", param="proof")
    unsecured = {name: value for name, value in secured.items() if name != "proof"}
    verified = verify_proof(unsecured, proof, expected_key=expected_key, expected_proof_purpose=expected_proof_purpose,
                            contexts=contexts, suites=suites)
    if bind_issuer:
        check_issuer(secured, verified.verify_key)
    return verified
