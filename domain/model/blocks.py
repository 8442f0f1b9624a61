"""Block commitments: the object cut into fixed blocks, one SHA-256 per block, one list hash.

The delivered object (one file) is cut into blocks of ``block_size`` bytes (a power of two,
8 MiB by default; the last block may be shorter). Each block's digest is
``SHA-256(block bytes)``. The commitment is the **hash of the hash list** (not a Merkle
tree: the buyer receives the whole list once, 32 bytes per block, checks it against the
root, then checks each block as it arrives)::

    root = SHA-256( u32be(len(LABEL)) || LABEL
                    || u64be(size_bytes) || u32be(block_size) || u32be(count)
                    || h_0 || h_1 || … || h_(count-1) )
    LABEL = "aimarket/delivery/blocks/v1"

The object size and the block size are inside the hash, so one list cannot be replayed for
another cut of the same bytes. The commitment travels as JSON in the signed listing
(``listing.delivery.blocks``) and in the hub-signed delivery token (``blocks`` claim)::

    {"alg": "sha256-list-v1", "block_size": 8388608, "count": 3, "root": "<base64url, 43 chars>"}

Pure: hashing of bytes handed in; reading files is the node's job.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from domain.model.errors import BlockHashMismatch, InvalidInput
from domain.model.keys import b64url, b64url_decode

ALG = "sha256-list-v1"
LABEL = b"aimarket/delivery/blocks/v1"
DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024
MIN_BLOCK_SIZE = 4 * 1024  # tests use small blocks; the protocol default stays 8 MiB
MAX_BLOCK_SIZE = 64 * 1024 * 1024
MAX_OBJECT_BYTES = 2**50  # 1 PiB: far above anything served, well inside I-JSON integers
MAX_BLOCKS = 2**24
HASH_BYTES = 32

COMMITMENT_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["alg", "block_size", "count", "root"],
    "properties": {
        "alg": {"const": ALG},
        "block_size": {"type": "integer", "minimum": MIN_BLOCK_SIZE, "maximum": MAX_BLOCK_SIZE},
        "count": {"type": "integer", "minimum": 1, "maximum": MAX_BLOCKS},
        "root": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
    },
}


def check_block_size(block_size: object) -> int:
    """Return ``block_size`` if it is a power of two in [4 KiB, 64 MiB], else raise InvalidInput."""
    if type(block_size) is not int or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise InvalidInput(f"block size must be an integer in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]")
    if block_size & (block_size - 1):
        raise InvalidInput("block size must be a power of two")
    return block_size


def block_count(size_bytes: int, block_size: int) -> int:
    """The number of blocks of an object (at least one: an empty object is one empty block)."""
    if type(size_bytes) is not int or not 0 <= size_bytes <= MAX_OBJECT_BYTES:
        raise InvalidInput("size_bytes out of range")
    check_block_size(block_size)
    return max(1, -(-size_bytes // block_size))


def block_length(index: int, size_bytes: int, block_size: int) -> int:
    """The length of block ``index`` (the last one may be short)."""
    count = block_count(size_bytes, block_size)
    if type(index) is not int or not 0 <= index < count:
        raise InvalidInput("block index out of range")
    return min(block_size, size_bytes - index * block_size)


def block_hash(data: bytes) -> bytes:
    """SHA-256 of one block's bytes."""
    return hashlib.sha256(data).digest()


def blocks_root(size_bytes: int, block_size: int, hashes: Sequence[bytes]) -> bytes:
    """The list hash (see the module docstring) over the per-block digests."""
    count = block_count(size_bytes, block_size)
    if len(hashes) != count or any(len(h) != HASH_BYTES for h in hashes):
        raise InvalidInput(f"expected {count} block hashes of {HASH_BYTES} bytes")
    sha = hashlib.sha256(struct.pack(">I", len(LABEL)) + LABEL)
    sha.update(struct.pack(">QII", size_bytes, block_size, count))
    for digest in hashes:
        sha.update(digest)
    return sha.digest()


@dataclass(frozen=True, slots=True)
class BlockCommitment:
    """A block size, a block count and the list hash; the JSON form is :meth:`to_json`."""

    block_size: int
    count: int
    root: bytes

    @classmethod
    def build(cls, size_bytes: int, block_size: int, hashes: Sequence[bytes]) -> BlockCommitment:
        """The commitment over ``hashes`` for an object of ``size_bytes``."""
        return cls(block_size, block_count(size_bytes, block_size), blocks_root(size_bytes, block_size, hashes))

    @classmethod
    def from_json(cls, obj: object) -> BlockCommitment:
        """Parse ``{"alg", "block_size", "count", "root"}`` strictly (closed, typed)."""
        if not isinstance(obj, dict) or set(obj) != {"alg", "block_size", "count", "root"} or obj["alg"] != ALG:
            raise InvalidInput(f"a block commitment is {{alg: {ALG}, block_size, count, root}}")
        count = obj["count"]
        if type(count) is not int or not 1 <= count <= MAX_BLOCKS:
            raise InvalidInput("block count out of range")
        root = b64url_decode(obj["root"])
        if len(root) != HASH_BYTES:
            raise InvalidInput("block root must be 32 bytes")
        return cls(check_block_size(obj["block_size"]), count, root)

    def to_json(self) -> dict[str, Any]:
        """The JSON object carried by listings and tokens."""
        return {"alg": ALG, "block_size": self.block_size, "count": self.count, "root": b64url(self.root)}

    def check_size(self, size_bytes: int) -> None:
        """Raise InvalidInput unless ``size_bytes`` cuts into exactly ``count`` blocks."""
        if block_count(size_bytes, self.block_size) != self.count:
            raise InvalidInput("block count does not match the object size")

    def check_hashes(self, size_bytes: int, hashes: Sequence[bytes]) -> None:
        """Raise BlockHashMismatch unless ``hashes`` is the committed list."""
        self.check_size(size_bytes)
        if len(hashes) != self.count:
            raise BlockHashMismatch(f"expected {self.count} block hashes, got {len(hashes)}")
        if not hmac.compare_digest(blocks_root(size_bytes, self.block_size, hashes), self.root):
            raise BlockHashMismatch("the block hash list does not match the committed root")


def hash_blocks(blocks: Iterable[bytes]) -> list[bytes]:
    """The per-block digests of ``blocks`` (already cut at the block size)."""
    return [block_hash(b) for b in blocks]


def split_hashes(data: bytes) -> list[bytes]:
    """Cut a concatenation of 32-byte digests into a list."""
    if len(data) % HASH_BYTES:
        raise BlockHashMismatch("a block hash list is a multiple of 32 bytes")
    return [data[i : i + HASH_BYTES] for i in range(0, len(data), HASH_BYTES)]


def check_block(index: int, data: bytes, hashes: Sequence[bytes], size_bytes: int, block_size: int) -> None:
    """Raise BlockHashMismatch unless ``data`` is block ``index`` of the committed list."""
    if len(data) != block_length(index, size_bytes, block_size):
        raise BlockHashMismatch(f"block {index} has the wrong length", block=index)
    if not hmac.compare_digest(block_hash(data), hashes[index]):
        raise BlockHashMismatch(f"block {index} does not match its committed hash", block=index)
