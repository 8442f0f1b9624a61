"""Tampered copies of the W3C vectors and of our own credentials are refused, each with its code;
an unknown suite is unsupported_cryptosuite, never signature_invalid."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from domain.model.errors import (
    CredentialContextMissing,
    InvalidInput,
    SignatureInvalid,
    UnsupportedCryptosuite,
)
from domain.model.keys import SigningKey, VerifyKey
from domain.model.vc import sign_credential, verify_credential
from domain.model.vc_sets import add_proof, verify_proof_set
from tests.vc.conftest import load_vectors

RDFC = load_vectors("vc_di_eddsa_rdfc_2022.json")
ED2020 = load_vectors("vc_ed25519signature2020.json")
KEY = SigningKey.from_multibase(RDFC["keyPair"]["secretKeyMultibase"])
OTHER = SigningKey.from_seed(bytes(32))
OTHER_VM = OTHER.verify_key.verification_method

Tamper = Callable[[dict[str, Any]], Any]
TAMPERS: dict[str, Tamper] = {
    "subject value changed": lambda d: d["credentialSubject"].update(alumniOf="The School of Forgery"),
    "subject id changed": lambda d: d["credentialSubject"].update(id="did:example:other"),
    "name changed": lambda d: d.update(name="Alumni Credential!"),
    "member added": lambda d: d.update(validUntil="2099-01-01T00:00:00Z"),
    "member removed": lambda d: d.pop("description"),
    "type removed": lambda d: d.update(type=["VerifiableCredential"]),
    "created changed": lambda d: d["proof"].update(created="2023-02-24T23:36:39Z"),
    "proofPurpose changed": lambda d: d["proof"].update(proofPurpose="authentication"),
    "nonce added": lambda d: d["proof"].update(nonce="replayed"),
    "verificationMethod changed": lambda d: d["proof"].update(
        verificationMethod=d["proof"]["verificationMethod"].replace("5678#", "9999#")),
    "proofValue character changed": lambda d: d["proof"].update(
        proofValue=d["proof"]["proofValue"][:-1] + ("Y" if d["proof"]["proofValue"][-1] != "Y" else "Z")),
    "proofValue of the other suite": lambda d: d["proof"].update(
        proofValue=(ED2020 if "cryptosuite" in d["proof"] else RDFC)["alumni"]["signed"]["proof"]["proofValue"]),
}


@pytest.mark.parametrize("vector", [RDFC["alumni"], ED2020["alumni"]], ids=["eddsa-rdfc-2022", "Ed25519Signature2020"])
@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampered_w3c_vectors_are_refused(vector, name):
    doc = copy.deepcopy(vector["signed"])
    TAMPERS[name](doc)
    purpose = doc["proof"]["proofPurpose"]
    with pytest.raises(SignatureInvalid) as info:
        verify_credential(doc, expected_key=KEY.verify_key, expected_proof_purpose=purpose)
    assert info.value.code == "signature_invalid"


@pytest.mark.parametrize("vector", [RDFC["alumni"], ED2020["alumni"]], ids=["eddsa-rdfc-2022", "Ed25519Signature2020"])
def test_swapped_key_is_refused(vector):
    with pytest.raises(SignatureInvalid):
        verify_credential(vector["signed"], expected_key=OTHER.verify_key)
    doc = copy.deepcopy(vector["signed"])
    doc["proof"]["verificationMethod"] = OTHER_VM  # a did:key resolves to itself: another key
    with pytest.raises(SignatureInvalid):
        verify_credential(doc)


def test_the_employ_vector_tampered_in_a_nested_blank_node_is_refused():
    doc = copy.deepcopy(RDFC["employ"]["signed"])
    doc["credentialSubject"]["employmentAuthorizationDocument"]["lprCategory"] = "C10"
    with pytest.raises(SignatureInvalid):
        verify_credential(doc, contexts=RDFC["employ"]["contexts"], bind_issuer=False)


@pytest.mark.parametrize(("proof_type", "cryptosuite"), [
    ("DataIntegrityProof", "ecdsa-rdfc-2019"),
    ("DataIntegrityProof", "eddsa-2022"),
    ("DataIntegrityProof", None),
    ("JsonWebSignature2020", None),
    ("Ed25519Signature2018", None),
    ("Ed25519Signature2020", "eddsa-rdfc-2022"),
])
def test_an_unknown_suite_is_unsupported_not_a_bad_signature(proof_type, cryptosuite):
    doc = copy.deepcopy(RDFC["alumni"]["signed"])
    doc["proof"]["type"] = proof_type
    doc["proof"].pop("cryptosuite")
    if cryptosuite is not None:
        doc["proof"]["cryptosuite"] = cryptosuite
    with pytest.raises(UnsupportedCryptosuite) as info:
        verify_credential(doc, expected_key=KEY.verify_key)
    assert info.value.code == "unsupported_cryptosuite" and info.value.status == 422
    if (proof_type, cryptosuite) == ("DataIntegrityProof", None):
        return  # signing: no cryptosuite means our default, eddsa-jcs-2022
    with pytest.raises(UnsupportedCryptosuite):
        sign_credential(_ours(), KEY, created="2025-06-01T10:00:00Z", nonce=None, proof_type=proof_type,
                        cryptosuite=cryptosuite)


def test_a_suite_relabelled_as_another_is_a_bad_signature():
    doc = copy.deepcopy(RDFC["alumni"]["signed"])
    doc["proof"]["cryptosuite"] = "eddsa-jcs-2022"
    with pytest.raises(SignatureInvalid):
        verify_credential(doc, expected_key=KEY.verify_key)


def test_ed25519signature2020_needs_its_context_in_the_document():
    doc = copy.deepcopy(ED2020["alumni"]["signed"])
    doc["@context"] = doc["@context"][:2]
    with pytest.raises(CredentialContextMissing) as info:
        verify_credential(doc, expected_key=KEY.verify_key)
    assert info.value.code == "vc_context_missing"
    with pytest.raises(CredentialContextMissing):
        sign_credential(_ours(), KEY, created="2025-06-01T10:00:00Z", nonce=None, proof_type="Ed25519Signature2020")


def _ours(**subject: Any) -> dict[str, Any]:
    return {
        "@context": ["https://www.w3.org/ns/credentials/v2", "https://www.w3.org/ns/credentials/examples/v2"],
        "type": ["VerifiableCredential", "ExampleCredential"],
        "issuer": KEY.verify_key.did_key,
        "validFrom": "2025-06-01T10:00:00Z",
        "credentialSubject": {"id": "did:example:subject", "score": 7, "note": "naïve € ✓", **subject},
    }


@pytest.mark.parametrize(("proof_type", "cryptosuite"), [("DataIntegrityProof", "eddsa-rdfc-2022"),
                                                         ("Ed25519Signature2020", None)])
def test_our_credential_round_trip_and_tampers(proof_type, cryptosuite):
    unsigned = _ours()
    if proof_type == "Ed25519Signature2020":
        unsigned["@context"].append("https://w3id.org/security/suites/ed25519-2020/v1")
    signed = sign_credential(unsigned, KEY, created="2025-06-01T10:00:00Z", nonce="n-0123456789abcdef",
                             proof_type=proof_type, cryptosuite=cryptosuite)
    assert "@context" not in signed["proof"]
    again = sign_credential(unsigned, KEY, created="2025-06-01T10:00:00Z", nonce="n-0123456789abcdef",
                            proof_type=proof_type, cryptosuite=cryptosuite)
    assert again == signed  # deterministic given created
    result = verify_credential(signed)
    assert (result.nonce, result.suite) == ("n-0123456789abcdef", cryptosuite or proof_type)
    for tamper in (lambda d: d["credentialSubject"].update(score=8),
                   lambda d: d["credentialSubject"].update(score="7"),
                   lambda d: d["proof"].update(nonce="n-0123456789abcdeg"),
                   lambda d: d["proof"].update(created="2025-06-01T10:00:01Z"),
                   lambda d: d.update(issuer=OTHER.verify_key.did_key)):
        doc = copy.deepcopy(signed)
        tamper(doc)
        with pytest.raises(SignatureInvalid):
            verify_credential(doc)


def test_a_receipt_shaped_credential_signs_with_our_delivery_context():
    # Receipts are eddsa-jcs-2022; the bundled delivery/v1 context lets the RDF suites sign them too.
    subject = {"purchase_id": "p-1", "jti": "j" * 16, "device_id": "d-1", "content_hash": "sha256-" + "A" * 43 + "=",
               "size_bytes": 4096, "blocks_root": "B" * 43, "session": "S" * 43, "listing_id": "x", "listing_version": 1,
               "buyer_jkt": "K" * 43, "seq": 1, "sessions": 1, "bytes_sent": 4096, "intervals": [[0, 2048], [3000, 4096]],
               "first_byte_ms": 1, "last_byte_ms": 2, "blocks_acked": 1, "outcome": "complete", "confirmation": None}
    unsigned = {"@context": ["https://www.w3.org/ns/credentials/v2", "https://aimarket.dev/ns/delivery/v1"],
                "type": ["VerifiableCredential", "DeliveryReceipt"], "issuer": KEY.verify_key.did_key,
                "validFrom": "2025-06-01T10:00:00Z", "credentialSubject": subject}
    signed = sign_credential(unsigned, KEY, created="2025-06-01T10:00:00Z", nonce="n-1", cryptosuite="eddsa-rdfc-2022")
    verify_credential(signed)
    swapped = copy.deepcopy(signed)
    swapped["credentialSubject"]["intervals"] = [[0, 3000], [2048, 4096]]  # same numbers, other pairs
    with pytest.raises(SignatureInvalid):
        verify_credential(swapped)


def test_chained_proofs_refuse_a_dropped_or_changed_link():
    public = {p["publicKeyMultibase"]: VerifyKey.from_multibase(p["publicKeyMultibase"])
              for p in RDFC["proofSetChain"]["keyPairs"].values()}
    document = RDFC["proofSetChain"]["documents"]["signedProofChain2"]
    keys = {p["verificationMethod"]: public[p["verificationMethod"].split("#")[1]] for p in document["proof"]}
    dropped = copy.deepcopy(document)
    del dropped["proof"][0]  # proof 3 signed proof 1: without it the chain is broken
    with pytest.raises(SignatureInvalid):
        verify_proof_set(dropped, keys=keys)
    changed = copy.deepcopy(document)
    changed["proof"][1]["created"] = "2023-02-24T23:36:39Z"
    with pytest.raises(SignatureInvalid):
        verify_proof_set(changed, keys=keys)
    with pytest.raises(InvalidInput):  # verify_credential takes one proof; sets go to verify_proof_set
        verify_credential(document)


def test_add_proof_refuses_a_link_to_a_missing_proof():
    signed = sign_credential(_ours(), KEY, created="2025-06-01T10:00:00Z", nonce=None, cryptosuite="eddsa-rdfc-2022")
    with pytest.raises(SignatureInvalid):
        add_proof(signed, OTHER, created="2025-06-01T10:00:00Z", cryptosuite="eddsa-rdfc-2022",
                  previous_proof="urn:uuid:missing")
    both = add_proof(signed, OTHER, created="2025-06-01T10:00:00Z", cryptosuite="eddsa-rdfc-2022")
    assert [r.verify_key for r in verify_proof_set(both)] == [KEY.verify_key, OTHER.verify_key]


def test_a_caller_can_accept_only_jcs_and_never_canonicalise_rdf(monkeypatch):
    from domain.model import vc_rdfc

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("RDF canonicalisation was run")

    monkeypatch.setattr(vc_rdfc, "canonical_nquads", refuse)
    with pytest.raises(UnsupportedCryptosuite) as info:
        verify_credential(RDFC["alumni"]["signed"], expected_key=KEY.verify_key, suites=("eddsa-jcs-2022",))
    assert "not accepted here" in info.value.detail
    with pytest.raises(UnsupportedCryptosuite):
        verify_proof_set(RDFC["proofSetChain"]["documents"]["signedProofChain2"], suites=("eddsa-jcs-2022",))
