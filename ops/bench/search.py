"""Search latency benchmark: lexical, semantic, hybrid and hybrid + filters.

    python3 ops/bench/search.py --store postgres --listings 100000
    python3 ops/bench/search.py --store sqlite --listings 100000
    python3 ops/bench/search.py --store postgres --listings 1000000

Synthetic listings go straight into the search read model in bulk. Embedding a million
texts would take hours on two cores, so a pool of distinct texts is embedded once and each
listing reuses a pool vector with small Gaussian noise (re-normalised). Reported: p50, p95
and p99 per query type, and each p50 as a multiple of a baseline measured in the same run
(a primary-key lookup of one listing row).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from projections.db import PostgresViewDB, SQLiteViewDB, ViewDB
from projections.search import vectors
from projections.search.index import index_for
from projections.search.projection import PG_TSV, UPSERT, SearchProjection, row_values, shared_embedder
from projections.search.query import lexical, parse_query, search

SUBJECTS = ["hospital admissions", "retail sales", "weather readings", "flight delays", "energy consumption",
            "crop yields", "traffic counts", "customer support tickets", "stock prices", "air quality",
            "school results", "housing prices", "clinical trials", "web server logs", "shipping routes",
            "music listening", "election results", "wildlife sightings", "insurance claims", "solar output"]
PLACES = ["Germany", "Kenya", "Brazil", "Japan", "Canada", "India", "France", "Chile", "Norway", "Vietnam"]
GRAINS = ["daily", "hourly", "monthly", "weekly", "per event"]
CATEGORIES = ["health", "retail", "climate", "transport", "energy", "agriculture", "finance", "education",
              "media", "government"]
QUERIES = ["patients admitted to clinics", "supermarket revenue by store", "rainfall and temperature",
           "late airplanes", "electricity usage of homes", "harvest per hectare", "cars on motorways",
           "complaints from clients", "share price history", "pollution in cities"]


def pool_texts(size: int, rng: random.Random) -> list[str]:
    texts = set()
    while len(texts) < size:
        texts.add(f"{rng.choice(GRAINS).title()} {rng.choice(SUBJECTS)} in {rng.choice(PLACES)} "
                  f"{rng.randint(1990, 2025)}, {rng.choice(SUBJECTS)} and {rng.choice(SUBJECTS)} by region")
    return sorted(texts)


def load(views: ViewDB, n: int, pool: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    texts = pool_texts(pool, rng)
    started = time.perf_counter()
    pool_vecs = shared_embedder().embed(texts)
    print(f"embedded {pool} pool texts in {time.perf_counter() - started:.1f} s", flush=True)
    nrng = np.random.default_rng(seed)
    started = time.perf_counter()
    batch: list[tuple] = []
    fts: list[tuple] = []
    for i in range(n):
        j = i % pool
        vec = pool_vecs[j] + nrng.normal(0, 0.02, pool_vecs.shape[1]).astype(np.float32)
        vec /= np.linalg.norm(vec)
        metadata = {"title": texts[j], "description": f"{texts[j]}. Synthetic listing {i}.",
                    "kind": ("dataset", "model", "pipeline")[i % 10 // 8], "category": CATEGORIES[i % 10],
                    "tags": ["synthetic", CATEGORIES[i % 10]], "licence": "CC-BY-4.0",
                    "columns": [{"name": "region"}, {"name": "value"}], "quality": {"score": rng.randint(20, 100)},
                    "pii": {"kinds_detected": ["email"] if i % 7 == 0 else []}, "content_hash": "sha256-x"}
        listing_id = str(uuid.UUID(int=rng.getrandbits(128)))
        batch.append(row_values(listing_id, i + 1, {"account_id": "bench", "device_id": "bench"}, metadata,
                                (rng.randint(0, 100_000), "USD" if i % 5 else "EUR"), vectors.to_bytes(vec),
                                "2025-01-01T00:00:00+00:00"))
        fts.append((listing_id, metadata["title"], " ".join(metadata["tags"]), metadata["description"], "region value"))
        if len(batch) == 5000 or i == n - 1:
            with views.transaction() as tx:
                tx.executemany(UPSERT, batch)
                if tx.dialect == "sqlite":
                    tx.executemany("INSERT INTO search_fts (listing_id, title, tags, description, columns)"
                                   " VALUES (?, ?, ?, ?, ?)", fts)
            batch, fts = [], []
    if views.dialect == "postgres":
        with views.transaction() as tx:
            tx.execute(PG_TSV)
        with views.transaction() as tx:
            tx.execute("ANALYZE search_listings")
    print(f"loaded {n} listings in {time.perf_counter() - started:.1f} s", flush=True)


def timed(fn, runs: int) -> list[float]:
    out = []
    for i in range(runs):
        started = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(views: ViewDB, runs: int) -> dict[str, dict[str, float]]:
    started = time.perf_counter()
    index = index_for(views)
    print(f"semantic index warm-up ({index.n} vectors) {time.perf_counter() - started:.1f} s", flush=True)
    ids = [r["listing_id"] for r in views.fetchall("SELECT listing_id FROM search_listings LIMIT 1000")]
    embedder = shared_embedder()
    filters = {"category": "health", "price_max": 50_000, "quality_min": 50, "pii_free": True}

    def semantic(i: int) -> None:
        with index.lock:
            _near, cos = index.nearest(index.mask({}), embedder.embed_one(QUERIES[i % len(QUERIES)]))
            np.argpartition(-cos, 200)[:200]

    # Recall@10 of the semantic leg against exact brute force (1.0 while the index is exact).
    hits = 0
    for q in QUERIES:
        vec = embedder.embed_one(q)
        with index.lock:
            exact = np.argsort(-(index.vectors[: index.n] @ vec))[:10]
            near, cos = index.nearest(index.mask({}), vec)
            hits += len(set(exact.tolist()) & set(near[np.argsort(-cos)[:10]].tolist()))
    recall = hits / (10 * len(QUERIES))
    print(f"semantic recall@10 vs exact: {recall:.3f} (ivf={'on' if index.ivf is not None else 'off'})", flush=True)

    cases = {
        "baseline_pk_lookup": lambda i: views.fetchone("SELECT * FROM search_listings WHERE listing_id = ?",
                                                       (ids[i % len(ids)],)),
        "lexical": lambda i: lexical(views, parse_query({"q": SUBJECTS[i % len(SUBJECTS)]})),
        "semantic": semantic,
        "hybrid": lambda i: search(views, {"q": QUERIES[i % len(QUERIES)]}),
        "hybrid_filtered": lambda i: search(views, {"q": QUERIES[i % len(QUERIES)], **filters}),
        "browse_filtered": lambda i: search(views, filters),
    }
    results = {}
    for name, fn in cases.items():
        timed(fn, 5)  # warm-up
        samples = timed(fn, runs)
        results[name] = {"p50_ms": round(statistics.median(samples), 2), "p95_ms": round(pct(samples, 95), 2),
                         "p99_ms": round(pct(samples, 99), 2)}
    base = results["baseline_pk_lookup"]["p50_ms"] or 0.01
    for r in results.values():
        r["p50_x_baseline"] = round(r["p50_ms"] / base, 1)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=["postgres", "sqlite"], required=True)
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--pool", type=int, default=3000, help="distinct texts embedded")
    parser.add_argument("--database-url", default=os.environ.get("AIMARKET_TEST_DATABASE_URL",
                                                                 "postgresql://root@127.0.0.1:5432/test"))
    args = parser.parse_args()
    schema = f"bench_search_{uuid.uuid4().hex[:8]}"
    tmp = tempfile.TemporaryDirectory()
    if args.store == "postgres":
        import psycopg

        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        views: ViewDB = PostgresViewDB(args.database_url, schema=schema)
    else:
        views = SQLiteViewDB(Path(tmp.name) / "views.sqlite")
    try:
        with views.transaction() as tx:
            SearchProjection().create_tables(tx)
        load(views, args.listings, min(args.pool, args.listings))
        results = run(views, args.runs)
        print(json.dumps({"store": args.store, "listings": args.listings, "runs": args.runs, "results": results},
                         indent=2))
    finally:
        views.close()
        if args.store == "postgres":
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
