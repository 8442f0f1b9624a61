"""Embedding vectors as bytes (for bytea / BLOB columns) and brute-force cosine top-k.

Stored form: float32 little-endian, no header, so ``len(blob) == 4 * dim`` and the same bytes
are read back on any platform. The model id belongs in a column beside the blob.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from domain.model.errors import InvalidInput

_F32_LE = np.dtype("<f4")


def to_bytes(vec: np.ndarray | Sequence[float]) -> bytes:
    """Serialise one vector as float32 little-endian bytes.

    Raises:
        InvalidInput: when ``vec`` is not one-dimensional, is empty, or is not finite.
    """
    arr = np.asarray(vec, dtype=np.float32)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInput("a vector must be one-dimensional and non-empty", param="vec")
    if not np.isfinite(arr).all():
        raise InvalidInput("a vector must be finite", param="vec")
    return arr.astype(_F32_LE, copy=False).tobytes()


def from_bytes(blob: bytes | bytearray | memoryview, dim: int | None = None) -> np.ndarray:
    """Read one vector written by :func:`to_bytes`; returns a writable float32 array.

    Args:
        blob: The stored bytes.
        dim: When given, the number of dimensions the blob must hold.

    Raises:
        InvalidInput: when the length is not a positive multiple of 4 (or not ``4 * dim``).
    """
    size = len(blob)
    if size == 0 or size % 4 or (dim is not None and size != 4 * dim):
        raise InvalidInput(f"a vector blob of {size} bytes is malformed", param="blob")
    return np.frombuffer(blob, dtype=_F32_LE).astype(np.float32)


def stack(blobs: Sequence[bytes | bytearray | memoryview], dim: int | None = None) -> np.ndarray:
    """Stack stored vectors into a C-contiguous float32 matrix of shape ``(len(blobs), dim)``.

    Args:
        blobs: Vectors written by :func:`to_bytes`, all of one length.
        dim: The expected dimensions; required to shape an empty matrix, else inferred.

    Raises:
        InvalidInput: when the blobs differ in length or do not match ``dim``.
    """
    if not blobs:
        return np.zeros((0, dim or 0), dtype=np.float32)
    width = len(blobs[0]) if dim is None else 4 * dim
    if width == 0 or width % 4 or any(len(b) != width for b in blobs):
        raise InvalidInput("vector blobs differ in length or are malformed", param="blobs")
    joined = b"".join(bytes(b) for b in blobs)
    return np.frombuffer(joined, dtype=_F32_LE).astype(np.float32).reshape(len(blobs), width // 4)


def top_k_cosine(
    query_vec: np.ndarray,
    matrix: np.ndarray,
    k: int,
    *,
    normalized: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``matrix`` most cosine-similar to ``query_vec``, best first.

    Uses ``np.argpartition`` (O(n)) and sorts only the ``k`` winners; equal scores among
    them are ordered by row index, so the same input always gives the same output.

    Args:
        query_vec: Shape ``(dim,)``.
        matrix: Shape ``(n, dim)``.
        k: How many rows to return; fewer when ``n < k``; ``k <= 0`` returns none.
        normalized: Whether the query and the rows already have unit norm (as
            :class:`~projections.search.embedding.Embedder` output does); when False, the
            norms are divided out here (zero rows score 0).

    Returns:
        ``(indices, scores)``: int64 row indices and their float32 cosine scores.

    Raises:
        InvalidInput: when the shapes do not agree.
    """
    query = np.asarray(query_vec, dtype=np.float32)
    rows = np.asarray(matrix, dtype=np.float32)
    if query.ndim != 1 or rows.ndim != 2 or rows.shape[1] != query.shape[0]:
        raise InvalidInput(f"query {query.shape} and matrix {rows.shape} do not agree", param="matrix")
    n = rows.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    scores = rows @ query
    if not normalized:
        norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(query)
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    candidates = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    # Sort the winners by score descending, then by index ascending.
    order = np.lexsort((candidates, -scores[candidates]))
    best = candidates[order].astype(np.int64)
    return best, scores[best].astype(np.float32)
