"""The W3C vc-di-eddsa test vectors for eddsa-rdfc-2022 and Ed25519Signature2020 verify, their
intermediate values are reproduced, and the signer reproduces their proof values byte for byte."""

from __future__ import annotations

import hashlib

import base58
import pytest

from domain.model.keys import SigningKey, VerifyKey
from domain.model.vc import sign_credential, verify_credential
from domain.model.vc_rdfc import canonical_nquads
from domain.model.vc_sets import add_proof, verify_proof_set
from tests.vc.conftest import load_vectors

RDFC = load_vectors("vc_di_eddsa_rdfc_2022.json")
ED2020 = load_vectors("vc_ed25519signature2020.json")
JCS = load_vectors("vc_di_eddsa_jcs_2022.json")
KEY = SigningKey.from_multibase(RDFC["keyPair"]["secretKeyMultibase"])


def _unsigned(signed: dict) -> dict:
    return {name: value for name, value in signed.items() if name != "proof"}


def _proof_config(signed: dict) -> dict:
    config = {name: value for name, value in signed["proof"].items() if name != "proofValue"}
    return {**config, "@context": signed["@context"]}


def _resign(signed: dict, key: SigningKey, contexts: dict | None = None) -> dict:
    proof = signed["proof"]
    return sign_credential(_unsigned(signed), key, created=proof["created"], nonce=proof.get("nonce"),
                           verification_method=proof["verificationMethod"], proof_purpose=proof["proofPurpose"],
                           proof_type=proof["type"], cryptosuite=proof.get("cryptosuite"), contexts=contexts)


def test_the_key_pairs_are_the_published_ones():
    assert KEY.verify_key == VerifyKey.from_multibase(RDFC["keyPair"]["publicKeyMultibase"])
    assert ED2020["keyPair"]["secretKeyMultibase"] == RDFC["keyPair"]["secretKeyMultibase"]


@pytest.mark.parametrize("vector", [RDFC["alumni"], ED2020["alumni"]], ids=["eddsa-rdfc-2022", "Ed25519Signature2020"])
def test_alumni_canonical_document_and_hashes(vector):
    canonical = canonical_nquads(_unsigned(vector["signed"]))
    assert canonical == vector["canonicalDocument"]
    proof_hash = hashlib.sha256(canonical_nquads(_proof_config(vector["signed"])).encode()).digest()
    doc_hash = hashlib.sha256(canonical.encode()).digest()
    assert (proof_hash + doc_hash).hex() == vector["combinedHashHex"]
    signature = KEY.sign(proof_hash + doc_hash)
    assert "z" + base58.b58encode(signature).decode() == vector["signed"]["proof"]["proofValue"] == vector.get(
        "proofValue", vector["signed"]["proof"]["proofValue"])
    if "signatureHex" in vector:
        assert signature.hex() == vector["signatureHex"]


def test_rdfc_canonical_proof_config_is_the_published_one():
    assert canonical_nquads(RDFC["alumni"]["proofConfig"]) == RDFC["alumni"]["canonicalProofConfig"]
    assert canonical_nquads(_proof_config(RDFC["alumni"]["signed"])) == RDFC["alumni"]["canonicalProofConfig"]


def test_ed25519signature2020_published_proof_config_canonicalises_alike():
    # The published proofConfig repeats a context and adds the suite's; the canonical form is the same.
    published = canonical_nquads(ED2020["alumni"]["proofConfig"])
    assert published == canonical_nquads(_proof_config(ED2020["alumni"]["signed"]))
    assert hashlib.sha256(published.encode()).hexdigest() == ED2020["alumni"]["combinedHashHex"][:64]
    assert hashlib.sha256(ED2020["alumni"]["canonicalDocument"].encode()).hexdigest() == ED2020["alumni"]["docHashHex"]


@pytest.mark.parametrize(("vector", "suite"), [(RDFC["alumni"], "eddsa-rdfc-2022"),
                                               (ED2020["alumni"], "Ed25519Signature2020")])
def test_alumni_verifies_and_is_reproduced(vector, suite):
    result = verify_credential(vector["signed"], expected_key=KEY.verify_key)
    assert (result.suite, result.verify_key, result.verification_method) == (
        suite, KEY.verify_key, vector["signed"]["proof"]["verificationMethod"])
    assert _resign(vector["signed"], KEY) == vector["signed"]


def test_employ_vector_verifies_and_is_reproduced():
    vector = RDFC["employ"]
    contexts = vector["contexts"]
    result = verify_credential(vector["signed"], contexts=contexts, bind_issuer=False)
    assert result.verify_key == KEY.verify_key and result.suite == "eddsa-rdfc-2022"
    proof_canon = canonical_nquads(_proof_config(vector["signed"]), contexts=contexts)
    assert proof_canon == vector["canonicalProofConfig"]
    assert hashlib.sha256(proof_canon.encode()).hexdigest() == vector["proofHashHex"]
    doc_hash = hashlib.sha256(canonical_nquads(_unsigned(vector["signed"]), contexts=contexts).encode()).digest()
    assert KEY.sign(bytes.fromhex(vector["proofHashHex"]) + doc_hash).hex() == vector["signatureHex"]
    assert _resign(vector["signed"], KEY, contexts) == vector["signed"]


def test_employ_vector_issuer_is_not_its_signer():
    # Its issuer is a P-256 did:key: our default binding of a did:key issuer to the signer refuses it.
    from domain.model.errors import SignatureInvalid

    with pytest.raises(SignatureInvalid):
        verify_credential(RDFC["employ"]["signed"], contexts=RDFC["employ"]["contexts"])


def test_the_jcs_vector_still_verifies_beside_them():
    assert verify_credential(JCS["w3c"]["signed"]).suite == "eddsa-jcs-2022"


def _set_keys() -> tuple[dict[str, VerifyKey], dict[str, SigningKey]]:
    pairs = RDFC["proofSetChain"]["keyPairs"].values()
    public = {pair["publicKeyMultibase"]: VerifyKey.from_multibase(pair["publicKeyMultibase"]) for pair in pairs}
    secret = {pair["publicKeyMultibase"]: SigningKey.from_multibase(pair["secretKeyMultibase"]) for pair in pairs}
    return public, secret


@pytest.mark.parametrize("name", sorted(RDFC["proofSetChain"]["documents"]))
def test_proof_sets_and_chains_verify_and_are_reproduced(name):
    document = RDFC["proofSetChain"]["documents"][name]
    proofs = document["proof"] if isinstance(document["proof"], list) else [document["proof"]]
    public, secret = _set_keys()
    by_method = {p["verificationMethod"]: public[p["verificationMethod"].split("#")[1]] for p in proofs}
    results = verify_proof_set(document, keys=by_method)
    assert [r.verify_key for r in results] == [by_method[p["verificationMethod"]] for p in proofs]

    rebuilt = _unsigned(document)
    for proof in proofs:
        rebuilt = add_proof(rebuilt, secret[proof["verificationMethod"].split("#")[1]], created=proof["created"],
                            verification_method=proof["verificationMethod"], cryptosuite=proof["cryptosuite"],
                            proof_id=proof.get("id"), previous_proof=proof.get("previousProof"))
    assert rebuilt == document


def test_vectors_name_their_sources():
    for section in (RDFC["alumni"], RDFC["employ"], ED2020["alumni"], RDFC["proofSetChain"]):
        for source in section["source"].values():
            assert len(source["commit"]) == 40 and source["repo"] and source["path"]
