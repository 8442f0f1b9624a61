"""eddsa-jcs-2022 Data Integrity proofs: the W3C vector, our vectors, tamper cases (the RDF suites: tests/vc/)."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from domain.model.errors import InvalidInput, MarketError, SignatureInvalid
from domain.model.jcs import canonical_json
from domain.model.keys import SigningKey, VerifyKey
from domain.model.vc import (
    ED25519_SIGNATURE_2020,
    VerifiedProof,
    parse_xsd_datetime,
    sign_credential,
    verify_credential,
    xsd_datetime,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "vc_di_eddsa_jcs_2022.json").read_text(encoding="utf-8")
)
W3C = VECTORS["w3c"]
W3C_KEY = SigningKey.from_multibase(W3C["keyPair"]["secretKeyMultibase"])


def test_w3c_key_pair():
    assert W3C_KEY.verify_key == VerifyKey.from_multibase(W3C["keyPair"]["publicKeyMultibase"])


def test_w3c_intermediate_values():
    proof_config = W3C["proofOptions"]
    assert canonical_json(W3C["unsigned"]).decode() == W3C["canonicalDocument"]
    assert canonical_json(proof_config).decode() == W3C["canonicalProofConfig"]
    combined = (
        hashlib.sha256(W3C["canonicalProofConfig"].encode()).digest()
        + hashlib.sha256(W3C["canonicalDocument"].encode()).digest()
    )
    assert combined.hex() == W3C["combinedHashHex"]
    assert W3C_KEY.sign(combined).hex() == W3C["signatureHex"]


def test_w3c_sign_reproduces_proof_value():
    options = W3C["proofOptions"]
    signed = sign_credential(
        W3C["unsigned"],
        W3C_KEY,
        created=options["created"],
        nonce=None,
        verification_method=options["verificationMethod"],
        proof_purpose=options["proofPurpose"],
    )
    assert signed["proof"]["proofValue"] == W3C["proofValue"]
    assert signed == W3C["signed"]
    # the default verification method is the did:key one used by the vector
    assert sign_credential(W3C["unsigned"], W3C_KEY, created=options["created"], nonce=None) == W3C["signed"]


def test_w3c_signed_credential_verifies():
    result = verify_credential(W3C["signed"])
    assert result == VerifiedProof(
        verify_key=W3C_KEY.verify_key,
        verification_method=W3C["proofOptions"]["verificationMethod"],
        created=datetime(2023, 2, 24, 23, 36, 38, tzinfo=UTC),
        nonce=None,
        cryptosuite="eddsa-jcs-2022",
        type="DataIntegrityProof",
        proof_purpose="assertionMethod",
    )
    assert verify_credential(W3C["signed"], expected_key=W3C_KEY.verify_key).verify_key == W3C_KEY.verify_key


def test_w3c_https_verification_method_needs_expected_key():
    draft = VECTORS["w3c_draft_https_vm"]
    key = VerifyKey.from_multibase(draft["expected_key"])
    assert verify_credential(draft["signed"], expected_key=key).verify_key == key
    with pytest.raises(InvalidInput):
        verify_credential(draft["signed"])


def test_proof_without_context_uses_the_documents_context():
    # Data Integrity: proof config @context is the document's; omitting it from the proof is equivalent.
    doc = copy.deepcopy(W3C["signed"])
    del doc["proof"]["@context"]
    verify_credential(doc)


@pytest.mark.parametrize("vector", VECTORS["ours"]["positive"], ids=lambda v: v["name"])
def test_our_positive_vectors(vector):
    signed = vector["signed"]
    result = verify_credential(signed)
    assert result.nonce == signed["proof"]["nonce"]
    assert result.verify_key == W3C_KEY.verify_key
    unsigned = {k: v for k, v in signed.items() if k != "proof"}
    again = sign_credential(
        unsigned,
        W3C_KEY,
        created=signed["proof"]["created"],
        nonce=signed["proof"]["nonce"],
        proof_type=signed["proof"]["type"],
    )
    assert again == signed


@pytest.mark.parametrize("case", VECTORS["negative"]["cases"], ids=lambda c: c["name"])
def test_negative_vectors(case):
    expected_key = VerifyKey.from_multibase(case["expected_key"]) if case["expected_key"] else None
    error = SignatureInvalid if case["expected_error"] == "signature_invalid" else InvalidInput
    with pytest.raises(error) as info:
        verify_credential(case["document"], expected_key=expected_key)
    assert info.value.code == case["expected_error"]


def _credential(key: SigningKey) -> dict:
    return {
        "@context": ["https://www.w3.org/ns/credentials/v2"],
        "type": ["VerifiableCredential", "AimMeterEvent"],
        "issuer": key.verify_key.did_key,
        "credentialSubject": {"listing": "lst_1", "bytes": 4096, "amount": "0.25"},
    }


@pytest.mark.parametrize("proof_type", ["DataIntegrityProof", ED25519_SIGNATURE_2020])
def test_round_trip_and_every_single_field_tamper(proof_type):
    key = SigningKey.generate()
    unsigned = _credential(key)
    if proof_type == ED25519_SIGNATURE_2020:
        # RDF safe mode: the subject's terms need a vocabulary (the examples' @vocab), the suite's
        # terms its own context.
        unsigned["@context"] += ["https://www.w3.org/ns/credentials/examples/v2",
                                 "https://w3id.org/security/suites/ed25519-2020/v1"]
    before = copy.deepcopy(unsigned)
    signed = sign_credential(unsigned, key, created="2025-06-01T10:00:00Z", nonce="n-1", proof_type=proof_type)
    assert unsigned == before  # input not modified
    result = verify_credential(signed, expected_key=key.verify_key)
    assert (result.type, result.nonce, result.created) == (
        proof_type,
        "n-1",
        datetime(2025, 6, 1, 10, tzinfo=UTC),
    )
    assert result.cryptosuite == ("eddsa-jcs-2022" if proof_type == "DataIntegrityProof" else None)
    if proof_type == ED25519_SIGNATURE_2020:
        assert "@context" not in signed["proof"] and "cryptosuite" not in signed["proof"]

    tampers = [
        lambda d: d["credentialSubject"].update(bytes=4097),
        lambda d: d["credentialSubject"].update(amount="0.250"),
        lambda d: d.update(type=["VerifiableCredential"]),
        lambda d: d.update(extra=True),
        lambda d: d["proof"].update(nonce="n-2"),
        lambda d: d["proof"].update(created="2025-06-01T10:00:01Z"),
        lambda d: d["proof"].update(proofValue="z" + "1" * 86),
        lambda d: d["proof"].update(proofValue="z2"),
    ]
    for tamper in tampers:
        doc = copy.deepcopy(signed)
        tamper(doc)
        with pytest.raises(SignatureInvalid):
            verify_credential(doc)


def test_wrong_expected_key_raises():
    key = SigningKey.generate()
    signed = sign_credential(_credential(key), key, created="2025-06-01T10:00:00Z", nonce=None)
    with pytest.raises(SignatureInvalid):
        verify_credential(signed, expected_key=SigningKey.generate().verify_key)


def test_proof_purpose_must_match_expectation():
    key = SigningKey.generate()
    signed = sign_credential(
        _credential(key), key, created="2025-06-01T10:00:00Z", nonce="x", proof_purpose="authentication"
    )
    with pytest.raises(SignatureInvalid):
        verify_credential(signed)
    assert verify_credential(signed, expected_proof_purpose="authentication").proof_purpose == "authentication"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"created": "2025-06-01 10:00:00"},
        {"created": "2025-06-01T10:00:00+02:00"},
        {"created": "2025-13-01T10:00:00Z"},
        {"nonce": ""},
        {"verification_method": ""},
        {"verification_method": SigningKey.from_seed(bytes(32)).verify_key.verification_method},
        {"proof_type": "JsonWebSignature2020"},
    ],
)
def test_sign_refuses_bad_options(kwargs):
    key = SigningKey.generate()
    options = {"created": "2025-06-01T10:00:00Z", "nonce": None, **kwargs}
    with pytest.raises(InvalidInput):
        sign_credential(_credential(key), key, **options)


def test_sign_refuses_bad_documents():
    key = SigningKey.generate()
    signed = sign_credential(_credential(key), key, created="2025-06-01T10:00:00Z", nonce=None)
    for bad in (signed, [1], {"x": float("nan")}):
        with pytest.raises(InvalidInput):
            sign_credential(bad, key, created="2025-06-01T10:00:00Z", nonce=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["proof"].update(created="yesterday"),
        lambda d: d["proof"].update(created="2025-06-01T10:00:00"),
        lambda d: d["proof"].update(nonce=5),
        lambda d: d["proof"].update(verificationMethod=None),
        lambda d: d["proof"].update(proofValue=None),
        lambda d: d.update(proof="z123"),
    ],
)
def test_malformed_proofs_are_invalid_input(mutate):
    key = SigningKey.generate()
    doc = sign_credential(_credential(key), key, created="2025-06-01T10:00:00Z", nonce="n")
    mutate(doc)
    with pytest.raises(InvalidInput):
        verify_credential(doc)


def test_verify_never_returns_false():
    key = SigningKey.generate()
    doc = sign_credential(_credential(key), key, created="2025-06-01T10:00:00Z", nonce="n")
    doc["credentialSubject"]["bytes"] = 1
    with pytest.raises(MarketError):
        verify_credential(doc)
    with pytest.raises(InvalidInput):
        verify_credential("not a dict")  # type: ignore[arg-type]


def test_xsd_datetime_helpers():
    moment = datetime(2025, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
    assert xsd_datetime(moment) == "2025-06-01T12:00:00.25Z"
    assert parse_xsd_datetime("2025-06-01T14:00:00.25+02:00") == moment
    assert parse_xsd_datetime("2025-06-01T12:00:00.250000123Z") == moment
    with pytest.raises(InvalidInput):
        xsd_datetime(datetime(2025, 6, 1))
