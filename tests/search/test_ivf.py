"""The IVF coarse index: same clusters from the same rows, high recall on clustered data,
rows added or changed later are found, and a large index switches to it automatically."""

from __future__ import annotations

import numpy as np

from projections.search import index as index_module
from projections.search.index import SemanticIndex
from projections.search.ivf import Ivf


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, centres: int = 300, dim: int = 32, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = unit(rng.normal(size=(centres, dim)))
    return unit(base[rng.integers(0, centres, n)] + rng.normal(0, 0.05, (n, dim)))


def test_recall_at_10_on_clustered_vectors() -> None:
    vecs = clustered(20_000)
    ivf = Ivf(vecs, len(vecs), n_lists=64)
    rng = np.random.default_rng(5)
    hits = 0
    for q in unit(vecs[rng.integers(0, len(vecs), 50)] + rng.normal(0, 0.05, (50, vecs.shape[1]))):
        exact = set(np.argsort(-(vecs @ q))[:10].tolist())
        near = ivf.rows_near(q, 8)
        assert len(near) < len(vecs) / 4  # it looked at a fraction of the rows
        found = near[np.argsort(-(vecs[near] @ q))[:10]]
        hits += len(exact & set(found.tolist()))
    assert hits / 500 >= 0.9


def test_same_rows_same_lists_and_later_rows_are_found() -> None:
    vecs = clustered(5_000)
    a, b = Ivf(vecs, 4_000, n_lists=32), Ivf(vecs, 4_000, n_lists=32)
    assert np.array_equal(a.centroids, b.centroids) and np.array_equal(a.list_of[:4000], b.list_of[:4000])
    new = np.arange(4_000, 5_000)
    a.place(new, vecs[new])
    for row in (4_000, 4_321, 4_999):
        assert row in a.rows_near(vecs[row], 1)
    # A row whose vector changed is found under its new vector and no longer under the old one.
    old_list = int(a.list_of[10])
    far = next(i for i in range(5_000) if a.list_of[i] != old_list)
    a.place(np.asarray([10]), vecs[far][None, :])
    assert 10 in a.rows_near(vecs[far], 1)
    members = a.rows_near(a.centroids[old_list], 1)
    assert 10 not in members and len(np.unique(members)) == len(members)


def test_semantic_index_switches_to_ivf_past_the_threshold(monkeypatch) -> None:
    monkeypatch.setattr(index_module, "ANN_MIN_ROWS", 3_000)
    monkeypatch.setattr(index_module, "EXACT_MAX_ROWS", 1_000)
    monkeypatch.setattr(index_module, "IVF_LISTS", 32)
    monkeypatch.setattr(index_module, "IVF_PROBES", 4)
    monkeypatch.setattr(index_module, "DIM", 32)
    vecs = clustered(4_000)
    index = SemanticIndex()
    rows = [{"listing_id": f"l{i}", "seq": i + 1, "status": "active", "kind": "dataset", "category": f"c{i % 2}",
             "currency": "USD", "licence": "MIT", "price_minor": i, "quality_score": 50, "pii_free": True,
             "trust_score": 0.5, "vector": vecs[i].tobytes()} for i in range(4_000)]
    index.apply(rows[:2_000])
    assert index.ivf is None
    index.apply(rows[2_000:])
    assert index.ivf is not None
    near, cos = index.nearest(index.mask({}), vecs[3_999])
    assert len(near) < 4_000 and 3_999 in near and np.isclose(cos.max(), 1.0, atol=1e-5)
    # A selective filter is still scored exactly, over just the rows it leaves.
    picked, _ = index.nearest(index.mask({"price_max": 499}), vecs[7])
    assert picked.tolist() == list(range(500))
