"""The pure Merkle module against the transparency-dev/merkle golden vectors, and properties.

Every probe of ``testdata/inclusion`` and ``testdata/consistency`` (tampered cases, size 0 and
equal-size rules included) must give the Go reference verifier's answer; roots of the
reference tree (``testonly/constants.go``) must come out of our tree code; and for random trees
every proof we build verifies while any flipped byte fails.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.model.errors import ProofInvalid
from domain.model.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MemoryTree,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
INCLUSION = json.loads((VECTORS / "merkle_inclusion.json").read_text())["cases"]
CONSISTENCY = json.loads((VECTORS / "merkle_consistency.json").read_text())["cases"]
TREE = json.loads((VECTORS / "merkle_tree.json").read_text())


def b64(text: str) -> bytes:
    return base64.b64decode(text)


@pytest.mark.parametrize("case", INCLUSION, ids=[c["path"] for c in INCLUSION])
def test_inclusion_vectors(case: dict) -> None:
    args = (case["leafIdx"], case["treeSize"], b64(case["leafHash"]), [b64(p) for p in case["proof"]],
            b64(case["root"]))
    if case["wantErr"]:
        with pytest.raises(ProofInvalid):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("case", CONSISTENCY, ids=[c["path"] for c in CONSISTENCY])
def test_consistency_vectors(case: dict) -> None:
    args = (case["size1"], case["size2"], b64(case["root1"]), b64(case["root2"]), [b64(p) for p in case["proof"]])
    if case["wantErr"]:
        with pytest.raises(ProofInvalid):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_the_vector_files_hold_every_kind_of_probe() -> None:
    assert len(INCLUSION) >= 90 and len(CONSISTENCY) >= 95
    assert sum(not c["wantErr"] for c in INCLUSION) == 6  # five happy paths and the single entry
    kinds = {c["desc"] for c in CONSISTENCY}
    assert {"happy path", "truncated proof", "swapped roots", "sizes are equal (zero) and proof is empty",
            "consistency check on empty tree (size1 is zero) is useless"} <= kinds


def test_reference_roots_and_our_proofs_of_the_reference_tree() -> None:
    leaves = [leaf_hash(bytes.fromhex(x)) for x in TREE["leaf_inputs"]]
    assert [h.hex() for h in leaves] == TREE["leaf_hashes"]
    tree = MemoryTree(leaves)
    for size, root in enumerate(TREE["roots"]):
        assert tree.root(size).hex() == root
        assert root_of(leaves[:size]).hex() == root
        assert CompactRange.of(leaves[:size]).root().hex() == root
    assert EMPTY_ROOT.hex() == TREE["roots"][0]
    # The proofs we build are the reference's own (the happy paths of the Go test data).
    for case in INCLUSION:
        if not case["wantErr"] and case["treeSize"] > 1:
            built = tree.inclusion_proof(case["leafIdx"], case["treeSize"])
            assert [base64.b64encode(p).decode() for p in built] == case["proof"], case["path"]
    for case in CONSISTENCY:
        if not case["wantErr"] and case["path"].split("/")[2] != "additional" and case["size1"] != case["size2"]:
            built = tree.consistency_proof(case["size1"], case["size2"])
            assert [base64.b64encode(p).decode() for p in built] == case["proof"], case["path"]


def test_size_zero_and_equal_sizes() -> None:
    tree = MemoryTree([leaf_hash(b"a"), leaf_hash(b"b")])
    with pytest.raises(ProofInvalid):
        tree.consistency_proof(0, 2)
    with pytest.raises(ProofInvalid):
        tree.inclusion_proof(2, 2)
    assert tree.consistency_proof(2, 2) == []
    verify_consistency(2, 2, tree.root(), tree.root(), [])
    with pytest.raises(ProofInvalid):
        verify_consistency(2, 2, tree.root(), tree.root(), [tree.root()])
    with pytest.raises(ProofInvalid):
        verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])


def _flip(data: bytes, byte: int, bit: int) -> bytes:
    out = bytearray(data)
    out[byte % len(out)] ^= 1 << bit
    return bytes(out)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300), st.data())
def test_every_inclusion_proof_verifies_and_any_flipped_byte_fails(size: int, data: st.DataObject) -> None:
    tree = MemoryTree([leaf_hash(i.to_bytes(4, "big")) for i in range(size)])
    index = data.draw(st.integers(0, size - 1))
    proof, root, leaf = tree.inclusion_proof(index), tree.root(), tree.leaves[index]
    verify_inclusion(index, size, leaf, proof, root)
    assert len(proof) == len(tree.inclusion_proof(index))
    byte, bit = data.draw(st.integers(0, 31)), data.draw(st.integers(0, 7))
    with pytest.raises(ProofInvalid):
        verify_inclusion(index, size, _flip(leaf, byte, bit), proof, root)
    with pytest.raises(ProofInvalid):
        verify_inclusion(index, size, leaf, proof, _flip(root, byte, bit))
    if proof:
        where = data.draw(st.integers(0, len(proof) - 1))
        tampered = [*proof[:where], _flip(proof[where], byte, bit), *proof[where + 1:]]
        with pytest.raises(ProofInvalid):
            verify_inclusion(index, size, leaf, tampered, root)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300), st.data())
def test_every_consistency_proof_verifies_and_any_flipped_byte_fails(size2: int, data: st.DataObject) -> None:
    tree = MemoryTree([leaf_hash(i.to_bytes(4, "big")) for i in range(size2)])
    size1 = data.draw(st.integers(1, size2))
    proof, root1, root2 = tree.consistency_proof(size1, size2), tree.root(size1), tree.root(size2)
    verify_consistency(size1, size2, root1, root2, proof)
    byte, bit = data.draw(st.integers(0, 31)), data.draw(st.integers(0, 7))
    with pytest.raises(ProofInvalid):
        verify_consistency(size1, size2, _flip(root1, byte, bit), root2, proof)
    with pytest.raises(ProofInvalid):
        verify_consistency(size1, size2, root1, _flip(root2, byte, bit), proof)
    if proof:
        where = data.draw(st.integers(0, len(proof) - 1))
        tampered = [*proof[:where], _flip(proof[where], byte, bit), *proof[where + 1:]]
        with pytest.raises(ProofInvalid):
            verify_consistency(size1, size2, root1, root2, tampered)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70))
def test_compact_range_gives_the_root_of_every_prefix(entries: list[bytes]) -> None:
    leaves = [leaf_hash(e) for e in entries]
    compact, tree = CompactRange(), MemoryTree(leaves)
    for size in range(1, len(leaves) + 1):
        compact.append(leaves[size - 1])
        assert compact.root() == tree.root(size)
