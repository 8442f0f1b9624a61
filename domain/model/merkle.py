"""The RFC 9162 (Certificate Transparency 2.0) Merkle tree: hashes, proofs and their checks.

* Leaf hash ``SHA-256(0x00 || data)``, interior node ``SHA-256(0x01 || left || right)``, the
  empty tree ``SHA-256("")``. A tree of n > 1 leaves splits at k, the largest power of two
  below n: ``MTH(D[0:n]) = node(MTH(D[0:k]), MTH(D[k:n]))`` (RFC 9162 §2.1.1).
* Proofs are built (§2.1.3.1 ``PATH``, §2.1.4.1 ``PROOF``) from a source of *perfect* subtree
  hashes: ``perfect(level, index)`` is the hash over leaves ``[index * 2**level, (index + 1) *
  2**level)``. A list of leaf hashes is one source (:class:`MemoryTree`); the audit-tree
  projection's stored strata are another. A proof needs O(log n) of them.
* Verification follows §2.1.3.2 and §2.1.4.2 step by step (the conditional right shifts are
  where verifiers go wrong), plus the rules of the Go reference verifier
  (transparency-dev/merkle ``proof.VerifyConsistency``), whose test data are our golden
  vectors: size 0 is refused, and equal sizes need an empty proof and equal roots.

Pure: no I/O. Failures raise :class:`~domain.model.errors.ProofInvalid`; nothing returns False.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from domain.model.errors import ProofInvalid

HASH_BYTES = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

# perfect(level, index) -> the hash of the complete subtree over leaves
# [index << level, (index + 1) << level)
PerfectHashes = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one entry (RFC 9162 §2.1.1)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: an interior node."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """k, the largest power of two smaller than ``n`` (n > 1): ``k < n <= 2k``."""
    if n < 2:
        raise ValueError("a split needs at least two leaves")
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` over a list of leaf hashes, in one pass with a stack of perfect subtrees."""
    if not leaf_hashes:
        return EMPTY_ROOT
    return CompactRange.of(leaf_hashes).root()


def range_hash(perfect: PerfectHashes, start: int, end: int) -> bytes:
    """``MTH(D[start:end])`` for a non-empty range, from perfect subtree hashes.

    The ranges a proof asks for start at a multiple of their split, so each is at most
    log2(n) perfect subtrees folded from the right.
    """
    n = end - start
    if n <= 0:
        raise ValueError("range_hash needs a non-empty range")
    if n & (n - 1) == 0 and start % n == 0:
        return perfect(n.bit_length() - 1, start // n)
    k = split_point(n)
    return node_hash(range_hash(perfect, start, start + k), range_hash(perfect, start + k, end))


def inclusion_proof(perfect: PerfectHashes, index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 9162 §2.1.3.1)."""
    if not 0 <= index < size:
        raise ProofInvalid(f"leaf index {index} is outside a tree of size {size}")
    proof: list[bytes] = []
    start, end, m = 0, size, index
    while end - start > 1:  # PATH(m, D[start:end]), the recursion unrolled from the top
        k = split_point(end - start)
        if m < k:
            proof.append(range_hash(perfect, start + k, end))
            end = start + k
        else:
            proof.append(range_hash(perfect, start, start + k))
            start, m = start + k, m - k
    proof.reverse()  # the RFC lists the path from the leaf up
    return proof


def consistency_proof(perfect: PerfectHashes, size1: int, size2: int) -> list[bytes]:
    """``PROOF(m, D[n])`` between the trees of ``size1`` and ``size2`` leaves (RFC 9162 §2.1.4.1)."""
    if not 0 < size1 <= size2:
        raise ProofInvalid(f"no consistency proof from size {size1} to size {size2}")
    proof: list[bytes] = []
    start, end, m, whole = 0, size2, size1, True
    while m != end - start:  # SUBPROOF(m, D[start:end], whole), unrolled
        n = end - start
        k = split_point(n)
        if m <= k:
            proof.append(range_hash(perfect, start + k, end))
            end = start + k
        else:
            proof.append(range_hash(perfect, start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:
        proof.append(range_hash(perfect, start, end))
    proof.reverse()
    return proof


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf`` (a leaf hash) is entry ``index`` of the tree ``(size, root)``.

    Raises:
        ProofInvalid: the proof does not verify, or an input has the wrong shape.
    """
    computed = root_from_inclusion(index, size, leaf, proof)
    if not hmac.compare_digest(computed, _hash(root, "root")):
        raise ProofInvalid("the inclusion proof leads to another root")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2, steps 1 to 5)."""
    if not 0 <= index < size:  # step 1
        raise ProofInvalid(f"leaf index {index} is outside a tree of size {size}")
    fn, sn = index, size - 1  # step 2
    r = _hash(leaf, "leaf hash")  # step 3
    for p in proof:  # step 4
        p = _hash(p, "proof element")
        if sn == 0:  # 4a
            raise ProofInvalid("the inclusion proof is longer than the tree is high")
        if fn & 1 or fn == sn:  # 4b
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1  # 4c
    if sn != 0:  # step 5
        raise ProofInvalid("the inclusion proof is shorter than the tree is high")
    return r


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> None:
    """Check that the tree ``(size2, root2)`` extends the tree ``(size1, root1)``.

    RFC 9162 §2.1.4.2, with the reference verifier's rules first: an empty first tree proves
    nothing and is refused; equal sizes need an empty proof and the same root.

    Raises:
        ProofInvalid: the proof does not verify, or an input has the wrong shape.
    """
    if size1 < 0 or size2 < size1:
        raise ProofInvalid(f"size {size2} cannot extend size {size1}")
    if size1 == 0:
        raise ProofInvalid("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofInvalid("trees of equal size need an empty consistency proof")
        if not hmac.compare_digest(bytes(root1), bytes(root2)):
            raise ProofInvalid("trees of equal size with different roots")
        return
    root1, root2 = _hash(root1, "first root"), _hash(root2, "second root")
    path = [_hash(c, "proof element") for c in proof]
    if not path:  # step 1
        raise ProofInvalid("an empty consistency proof between different sizes")
    if size1 & (size1 - 1) == 0:  # step 2: first is a power of two
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1  # step 3
    while fn & 1:  # step 4
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:  # 6a
            raise ProofInvalid("the consistency proof is longer than the tree is high")
        if fn & 1 or fn == sn:  # 6b
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1  # 6c
    # step 7
    if sn != 0 or not hmac.compare_digest(fr, root1) or not hmac.compare_digest(sr, root2):
        raise ProofInvalid("the consistency proof does not lead to both roots")


def _hash(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) != HASH_BYTES:
        raise ProofInvalid(f"the {what} must be {HASH_BYTES} bytes")
    return bytes(value)


class CompactRange:
    """The perfect subtrees covering leaves ``[0, size)``: one per set bit of ``size``.

    Appending a leaf merges equal-sized neighbours, so the root of every prefix of a log is
    available in one streaming pass with O(log n) memory (what ``audit verify`` needs).
    """

    __slots__ = ("hashes", "size")

    def __init__(self) -> None:
        self.size = 0
        self.hashes: list[bytes] = []  # largest subtree first

    @classmethod
    def of(cls, leaf_hashes: Sequence[bytes]) -> CompactRange:
        compact = cls()
        for h in leaf_hashes:
            compact.append(h)
        return compact

    def append(self, leaf: bytes) -> None:
        h = leaf
        size = self.size
        while size & 1:  # the lowest subtree has our height: merge
            h = node_hash(self.hashes.pop(), h)
            size >>= 1
        self.hashes.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        h = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            h = node_hash(left, h)
        return h


class MemoryTree:
    """A tree over leaf hashes held in memory: a proof source for tests, exports and verifiers."""

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        self.leaves: list[bytes] = list(leaf_hashes)
        self._levels: list[list[bytes]] = [self.leaves]

    def __len__(self) -> int:
        return len(self.leaves)

    def append(self, leaf: bytes) -> None:
        self.leaves.append(leaf)

    def perfect(self, level: int, index: int) -> bytes:
        """The complete subtree at ``level`` over leaves ``[index << level, (index + 1) << level)``."""
        if (index + 1) << level > len(self.leaves):
            raise ValueError(f"no complete subtree at level {level} index {index}")
        while len(self._levels) <= level:
            self._levels.append([])
        for lv in range(1, level + 1):  # extend each level as far as the leaves allow
            below, here = self._levels[lv - 1], self._levels[lv]
            for i in range(len(here), len(below) // 2):
                here.append(node_hash(below[2 * i], below[2 * i + 1]))
        return self._levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        size = len(self.leaves) if size is None else size
        return EMPTY_ROOT if size == 0 else range_hash(self.perfect, 0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self.perfect, index, len(self.leaves) if size is None else size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        return consistency_proof(self.perfect, size1, len(self.leaves) if size2 is None else size2)
