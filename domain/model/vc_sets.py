"""Proof sets and proof chains (W3C Data Integrity 1.0, "Proof Sets" and "Proof Chains").

A credential may carry several proofs (``"proof": [...]``). Each proof of a *set* covers the
credential without any proof; a proof with ``previousProof`` (an id or a list of ids) is part
of a *chain*: it covers the credential with ``proof`` set to the list of the proofs it names,
so it also signs them. Every proof uses one of the suites of ``domain.model.vc``.

:func:`verify_proof_set` checks every proof (all must verify: a set is not "any one of");
:func:`add_proof` adds one, optionally chained. Checked beyond the specification: at most
:data:`MAX_PROOFS` proofs, proof ids unique, every ``previousProof`` names a proof of the set.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from domain.model.errors import InvalidInput, SignatureInvalid
from domain.model.keys import DID_KEY_PREFIX, SigningKey, VerifyKey
from domain.model.vc import (
    SUITES,
    Contexts,
    VerifiedProof,
    check_issuer,
    create_proof,
    issuer_id,
    verify_proof,
)

MAX_PROOFS = 16


def _proofs(secured: Any) -> list[dict[str, Any]]:
    if not isinstance(secured, dict):
        raise InvalidInput("a credential must be a JSON object")
    proof = secured.get("proof")
    proofs = proof if isinstance(proof, list) else [proof] if isinstance(proof, dict) else None
    if not proofs or not all(isinstance(item, dict) for item in proofs):
        raise InvalidInput("credential has no proof object or list of proof objects", param="proof")
    if len(proofs) > MAX_PROOFS:
        raise InvalidInput(f"at most {MAX_PROOFS} proofs are verified", param="proof")
    ids = [item["id"] for item in proofs if "id" in item]
    if len(ids) != len(set(map(str, ids))):
        raise InvalidInput("two proofs of the set have the same id", param="proof")
    return proofs


def _previous_ids(proof: dict[str, Any]) -> list[str] | None:
    previous = proof.get("previousProof")
    if previous is None:
        return None
    ids = [previous] if isinstance(previous, str) else previous
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise InvalidInput("proof.previousProof must be an id or a list of ids", param="proof.previousProof")
    return ids


def _covered(unsecured: dict[str, Any], proofs: list[dict[str, Any]], previous: list[str] | None) -> dict[str, Any]:
    """What a proof signs: the credential, plus for a chained proof the proofs it names."""
    if previous is None:
        return unsecured
    by_id = {item.get("id"): item for item in proofs if "id" in item}
    missing = [i for i in previous if i not in by_id]
    if missing:
        raise SignatureInvalid(f"previousProof names proofs the credential does not carry: {missing}")
    return {**unsecured, "proof": [by_id[i] for i in previous]}


def _by_issuer(secured: dict[str, Any], key: VerifyKey) -> bool:
    try:
        check_issuer(secured, key)
    except SignatureInvalid:
        return False
    return True


def verify_proof_set(
    secured: dict[str, Any],
    *,
    keys: Mapping[str, VerifyKey] | None = None,
    expected_proof_purpose: str = "assertionMethod",
    contexts: Contexts = None,
    bind_issuer: bool = True,
    suites: tuple[str, ...] = SUITES,
) -> list[VerifiedProof]:
    """Verify every proof of a credential's proof set or chain (a single proof object too).

    Args:
        secured: the credential with ``proof`` (an object or a list of them).
        keys: verification method -> key, for methods that are not ``did:key`` (a did:key
            method is decoded from itself and, when also listed, must be that key).
        expected_proof_purpose: the ``proofPurpose`` every proof must have.
        contexts: extra JSON-LD context documents by URL for the RDF suites.
        bind_issuer: when the ``issuer`` is a did:key, at least one proof must be its key's.
        suites: the suites accepted (as for ``verify_credential``).

    Returns:
        One :class:`VerifiedProof` per proof, in the document's order.

    Raises:
        As ``domain.model.vc.verify_credential``; ``SignatureInvalid`` for a chain link to a
        proof that is not there.
    """
    proofs = _proofs(secured)
    unsecured = {name: value for name, value in secured.items() if name != "proof"}
    verified = []
    for proof in proofs:
        vm = proof.get("verificationMethod")
        expected = (keys or {}).get(vm) if isinstance(vm, str) else None
        covered = _covered(unsecured, proofs, _previous_ids(proof))
        verified.append(verify_proof(covered, proof, expected_key=expected,
                                     expected_proof_purpose=expected_proof_purpose, contexts=contexts,
                                     suites=suites))
    issuer = issuer_id(secured)
    if bind_issuer and issuer is not None and issuer.startswith(DID_KEY_PREFIX):
        if not any(_by_issuer(secured, result.verify_key) for result in verified):
            raise SignatureInvalid("no proof of the set was made by the issuer's did:key")
    return verified


def add_proof(
    secured: dict[str, Any],
    key: SigningKey,
    *,
    created: str,
    nonce: str | None = None,
    verification_method: str | None = None,
    proof_purpose: str = "assertionMethod",
    proof_type: str = "DataIntegrityProof",
    cryptosuite: str | None = None,
    contexts: Contexts = None,
    proof_id: str | None = None,
    previous_proof: str | list[str] | None = None,
) -> dict[str, Any]:
    """Return a copy of ``secured`` with one more proof (the first one when it has none).

    ``previous_proof`` chains the new proof to the named proofs of the set (they must carry
    those ids); ``proof_id`` gives the new proof an ``id`` so that a later one can name it. The
    other arguments are those of ``domain.model.vc.sign_credential``.
    """
    if not isinstance(secured, dict):
        raise InvalidInput("a credential must be a JSON object")
    proofs = _proofs(secured) if "proof" in secured else []
    if len(proofs) >= MAX_PROOFS:
        raise InvalidInput(f"a credential carries at most {MAX_PROOFS} proofs", param="proof")
    if proof_id is not None and any(item.get("id") == proof_id for item in proofs):
        raise InvalidInput("another proof of the set has this id", param="proof_id")
    document = copy.deepcopy({name: value for name, value in secured.items() if name != "proof"})
    previous = None if previous_proof is None else _previous_ids({"previousProof": previous_proof})
    covered = _covered(document, copy.deepcopy(proofs), previous)
    proof = create_proof(covered, key, created=created, nonce=nonce, verification_method=verification_method,
                         proof_purpose=proof_purpose, proof_type=proof_type, cryptosuite=cryptosuite,
                         contexts=contexts, proof_id=proof_id, previous_proof=previous_proof)
    document["proof"] = [*copy.deepcopy(proofs), proof] if proofs else proof
    return document
