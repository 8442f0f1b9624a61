"""An inverted-file (IVF) coarse index over the semantic index's vectors, in numpy.

Brute force reads every vector on each query: 1.5 GB at a million listings, ~130 ms on
two cores. The IVF splits the unit vectors into ``n_lists`` clusters (spherical k-means on
a sample, fixed seed, so every process builds the same clusters from the same rows); a query
scores the ``n_probe`` closest centroids and then only the rows in those lists, a few per
cent of the catalogue. It is approximate: a row whose nearest centroid was not probed is
missed, which ``ops/bench/search.py`` measures as recall@10 against the exact answer.

No vectors are copied: lists hold row numbers into the index's own matrix. Rows added later
join their nearest list; a row whose vector changed is re-listed, and stale entries are
filtered out at query time (``list_of`` is the truth).
"""

from __future__ import annotations

import numpy as np

SAMPLE_PER_LIST = 64
KMEANS_ITERS = 10
ASSIGN_CHUNK = 65_536


class Ivf:
    """Coarse lists over rows ``0..n-1`` of ``vectors`` (unit length, float32)."""

    def __init__(self, vectors: np.ndarray, n: int, n_lists: int, seed: int = 0) -> None:
        self.n_lists = n_lists
        self.centroids = _spherical_kmeans(vectors[:n], n_lists, seed)
        self.list_of = np.zeros(max(n, 1024), dtype=np.int32)
        self.list_of[:n] = self._nearest(vectors[:n])
        order = np.argsort(self.list_of[:n], kind="stable")
        bounds = np.searchsorted(self.list_of[:n][order], np.arange(n_lists + 1))
        self.members = [order[bounds[i]:bounds[i + 1]] for i in range(n_lists)]
        self.extra: list[list[int]] = [[] for _ in range(n_lists)]

    def _nearest(self, vecs: np.ndarray) -> np.ndarray:
        out = np.empty(len(vecs), dtype=np.int32)
        for start in range(0, len(vecs), ASSIGN_CHUNK):
            out[start:start + ASSIGN_CHUNK] = np.argmax(vecs[start:start + ASSIGN_CHUNK] @ self.centroids.T, axis=1)
        return out

    def place(self, rows: np.ndarray, vecs: np.ndarray) -> None:
        """(Re-)list ``rows`` whose vectors are ``vecs`` (new rows or changed vectors)."""
        if len(rows) == 0:
            return
        needed = int(rows.max()) + 1
        if needed > len(self.list_of):
            grown = np.zeros(max(needed, 2 * len(self.list_of)), dtype=np.int32)
            grown[: len(self.list_of)] = self.list_of
            self.list_of = grown
        lists = self._nearest(vecs)
        self.list_of[rows] = lists
        for row, lst in zip(rows.tolist(), lists.tolist(), strict=True):
            self.extra[lst].append(row)

    def rows_near(self, query_vec: np.ndarray, n_probe: int) -> np.ndarray:
        """Row numbers in the ``n_probe`` lists nearest to ``query_vec`` (sorted, unique)."""
        scores = self.centroids @ query_vec
        probe = np.argpartition(-scores, min(n_probe, self.n_lists) - 1)[:n_probe]
        parts = []
        for lst in probe.tolist():
            rows = self.members[lst]
            if self.extra[lst]:
                rows = np.concatenate([rows, np.asarray(self.extra[lst], dtype=rows.dtype)])
            parts.append(rows[self.list_of[rows] == lst])  # drop rows that moved to another list
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _spherical_kmeans(vecs: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sample = vecs[np.sort(rng.choice(len(vecs), min(len(vecs), k * SAMPLE_PER_LIST), replace=False))]
    centroids = sample[rng.choice(len(sample), k, replace=False)].copy()
    for _ in range(KMEANS_ITERS):
        assign = np.argmax(sample @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, sample)
        norms = np.linalg.norm(sums, axis=1)
        empty = norms == 0
        if empty.any():  # re-seed empty clusters with random sample points
            sums[empty] = sample[rng.choice(len(sample), int(empty.sum()), replace=False)]
            norms[empty] = 1.0
        centroids = (sums / norms[:, None]).astype(np.float32)
    return centroids
