"""RDF canonicalisation in safe mode: what JSON-LD would drop or pyld would serialise ambiguously
is refused before anything is signed or verified; contexts come only from the bundle, never the
network; work is bounded."""

from __future__ import annotations

import copy
import importlib.metadata
import socket
import time
from typing import Any

import pytest

from domain.model import vc_rdfc
from domain.model.errors import (
    CredentialContextUnknown,
    CredentialControlCharacter,
    CredentialNotJsonLd,
    CredentialTooComplex,
    CredentialUndefinedTerm,
    InvalidInput,
)
from domain.model.keys import SigningKey
from domain.model.vc import sign_credential, verify_credential
from domain.model.vc_contexts import BUNDLED_CONTEXTS
from domain.model.vc_rdfc import canonical_nquads
from tests.vc.conftest import VECTORS, NetworkUsed, load_vectors

KEY = SigningKey.from_seed(bytes(range(32)))
V2 = "https://www.w3.org/ns/credentials/v2"
EXAMPLES = "https://www.w3.org/ns/credentials/examples/v2"


def _credential(context: list[Any] | None = None, **subject: Any) -> dict[str, Any]:
    return {"@context": context or [V2, EXAMPLES], "type": ["VerifiableCredential"], "issuer": KEY.verify_key.did_key,
            "credentialSubject": {"id": "did:example:s", **subject}}


def _sign(doc: dict[str, Any]) -> dict[str, Any]:
    return sign_credential(doc, KEY, created="2025-06-01T10:00:00Z", nonce=None, cryptosuite="eddsa-rdfc-2022")


def test_pyld_is_the_version_whose_internals_we_extend():
    # vc_rdfc subclasses pyld.canon.URDNA2015 (hash_n_degree_quads, hash_related_blank_node) and
    # works around 3.3.0's escaping: an upgrade must re-read both.
    assert importlib.metadata.version("pyld") == "3.3.0"


def test_the_network_guard_is_live():
    with pytest.raises(NetworkUsed):
        socket.create_connection(("www.w3.org", 443))


def test_every_bundled_context_loads_offline():
    for url in BUNDLED_CONTEXTS:
        doc = {"@context": [url], "@id": "urn:x:1", "urn:x:p": "v"}
        assert canonical_nquads(doc) == '<urn:x:1> <urn:x:p> "v" .\n'


@pytest.mark.parametrize("make", [
    lambda: _credential([V2]),  # the base context defines no vocabulary for the subject's terms
    lambda: {**_credential(), "@context": ["https://www.w3.org/2018/credentials/v1"],
             "issuanceDate": "2025-06-01T10:00:00Z", "unknownTerm": 1},
])
def test_an_undefined_term_is_refused(make):
    doc = make()
    doc["credentialSubject"]["mystery"] = "unsigned if dropped"
    with pytest.raises(CredentialUndefinedTerm) as info:
        _sign(doc)
    assert info.value.code == "vc_undefined_term"


def test_an_undefined_term_added_to_a_signed_credential_is_refused():
    signed = _sign(_credential(note="defined by the examples' vocabulary"))
    tampered = copy.deepcopy(signed)
    tampered["@context"] = [V2]
    tampered["proof"].pop("@context", None)
    with pytest.raises(CredentialUndefinedTerm):
        verify_credential(tampered)


@pytest.mark.parametrize("mutate", [
    lambda d: d["credentialSubject"].update(id="relative/id"),
    lambda d: d.update(type=["VerifiableCredential", "Undefined"], **{"@context": ["https://www.w3.org/2018/credentials/v1"]},
                       issuanceDate="2025-06-01T10:00:00Z"),
    lambda d: d["credentialSubject"].update(note={"@value": "x", "@language": "en", "@direction": "rtl"}),
    lambda d: d.update(**{"@context": [V2, EXAMPLES, {"@vocab": None}]}, undefinedWithoutVocab="x"),
])
def test_relative_iris_and_direction_are_refused(mutate):
    doc = _credential()
    mutate(doc)
    with pytest.raises(CredentialUndefinedTerm):
        _sign(doc)


def test_an_unknown_context_is_refused_never_fetched():
    doc = _credential([V2, "https://evil.example/ctx/v1"])
    with pytest.raises(CredentialContextUnknown) as info:
        _sign(doc)
    assert info.value.code == "vc_context_unknown" and "evil.example" in info.value.detail
    # a caller may bring its own context document
    own = {"https://evil.example/ctx/v1": {"@context": {"@vocab": "https://evil.example/ns#"}}}
    signed = sign_credential(doc, KEY, created="2025-06-01T10:00:00Z", nonce=None, cryptosuite="eddsa-rdfc-2022",
                             contexts=own)
    verify_credential(signed, contexts=own)
    with pytest.raises(CredentialContextUnknown):
        verify_credential(signed)


def test_an_inline_context_url_import_is_refused_too():
    doc = _credential([V2, {"@import": "https://evil.example/import"}])
    with pytest.raises((CredentialContextUnknown, CredentialNotJsonLd)):
        _sign(doc)


@pytest.mark.parametrize("text", ["a\x00b", "bell\x07", "back\x08space", "form\x0cfeed", "esc\x1b[0m", "del\x7f",
                                  "lone \ud800 surrogate"])
def test_control_characters_pyld_would_not_escape_are_refused(text):
    with pytest.raises(CredentialControlCharacter) as info:
        _sign(_credential(note=text))
    assert info.value.code == "vc_control_character"


def test_tab_newline_and_carriage_return_are_escaped_and_signed():
    signed = _sign(_credential(note="line 1\n\tline 2\r\n\"quoted\" \\ end"))
    verify_credential(signed)
    assert '\\n\\tline 2\\r\\n\\"quoted\\" \\\\ end' in canonical_nquads(
        {k: v for k, v in signed.items() if k != "proof"})


@pytest.mark.parametrize("iri", ["urn:x:a>b", "urn:x:a b", "urn:x:a\"b", "urn:x:{a}", "urn:x:a\\b"])
def test_iris_n_quads_cannot_carry_are_refused(iri):
    with pytest.raises(CredentialControlCharacter):
        _sign(_credential(link={"id": iri}))


def test_size_depth_and_statement_limits(monkeypatch):
    with pytest.raises(CredentialTooComplex):
        _sign(_credential(blob="x" * (vc_rdfc.MAX_DOCUMENT_BYTES + 1)))
    deep: dict[str, Any] = {"v": 1}
    for _ in range(vc_rdfc.MAX_DEPTH + 1):
        deep = {"inner": deep}
    with pytest.raises(CredentialTooComplex):
        _sign(_credential(deep=deep))
    with pytest.raises(CredentialTooComplex):
        _sign(_credential(items=[{"n": i} for i in range(vc_rdfc.MAX_BLANK_NODES + 1)]))
    monkeypatch.setattr(vc_rdfc, "MAX_QUADS", 8)
    with pytest.raises(CredentialTooComplex):
        _sign(_credential(values=list(range(10))))


def test_a_crafted_graph_of_look_alike_blank_nodes_stops_within_the_work_limit():
    # A clique of blank nodes, all alike to first-degree hashing: URDNA2015 explores every
    # permutation (pyld alone: 7 nodes take seconds, each one more multiplies). Ours stops it.
    clique = [{"id": f"_:b{i}", "next": [{"id": f"_:b{j}"} for j in range(12) if j != i]} for i in range(12)]
    started = time.monotonic()
    with pytest.raises(CredentialTooComplex):
        canonical_nquads({"@context": [V2, EXAMPLES], "@graph": clique})
    assert time.monotonic() - started < 10


def test_a_few_look_alike_blank_nodes_still_canonicalise():
    ring = [{"id": f"_:b{i}", "next": {"id": f"_:b{(i + 1) % 4}"}} for i in range(4)]
    assert canonical_nquads({"@context": [V2, EXAMPLES], "@graph": ring}).count("_:c14n") == 8


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused(bad):
    with pytest.raises(CredentialNotJsonLd):
        _sign(_credential(x=bad))


def test_invalid_json_ld_is_refused_with_its_code():
    doc = _credential([V2, {"id": "urn:x:redefined"}])  # redefining a protected term
    with pytest.raises(CredentialNotJsonLd) as info:
        _sign(doc)
    assert info.value.code == "vc_invalid_jsonld"


def test_every_refusal_is_invalid_input():
    for error in (CredentialContextUnknown, CredentialControlCharacter, CredentialNotJsonLd, CredentialTooComplex,
                  CredentialUndefinedTerm):
        assert issubclass(error, InvalidInput)


def test_bundled_documents_are_never_mutated():
    before = copy.deepcopy(dict(BUNDLED_CONTEXTS))
    vector = load_vectors("vc_di_eddsa_rdfc_2022.json")["alumni"]["signed"]
    verify_credential(vector, expected_key=SigningKey.from_multibase(
        load_vectors("vc_di_eddsa_rdfc_2022.json")["keyPair"]["secretKeyMultibase"]).verify_key)
    assert dict(BUNDLED_CONTEXTS) == before


def test_the_suite_context_named_by_vc_is_bundled():
    from domain.model import vc

    assert vc.ED25519_2020_V1 in BUNDLED_CONTEXTS


def test_the_jcs_path_does_not_load_pyld():
    # vc.py imports the RDF machinery only when an RDF suite is used (it costs ~150 ms to load).
    import subprocess
    import sys

    code = ("import sys, domain.model.vc as vc, domain.model.receipts; "
            "assert 'pyld' not in sys.modules and 'domain.model.vc_rdfc' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(VECTORS.parents[1]), timeout=60)
