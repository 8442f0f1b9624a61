"""Search latency benchmark: lexical, semantic, hybrid and hybrid + filters.

    python3 ops/bench/search.py --test-services --store postgres --listings 100000
    python3 ops/bench/search.py --test-services --store postgres --listings 1000000 --baseline exact
    python3 ops/bench/search.py --store sqlite --listings 100000

Synthetic listings go straight into the search read model in bulk. Embedding a million
texts would take hours on two cores, so a pool of distinct texts is embedded once and each
listing reuses a pool vector with small Gaussian noise (re-normalised).

Each query type is timed ``--runs`` times after 5 warm-ups; where the baseline's setting
applies, every run is paired with a baseline run (alternating which goes first) that
differs in ONE named setting:

* ``--baseline lexical-scan`` (default): ``projections.search.query.LEXICAL_SCAN`` = the
  number of listings, i.e. PostgreSQL ranks every lexical match instead of a bounded
  candidate set (applies to lexical, hybrid, hybrid + filters; SQLite's FTS5 has no such
  bound, so there the baseline is the same code);
* ``--baseline exact``: ``projections.search.index.EXACT_MAX_ROWS`` = the number of
  listings, i.e. exact semantic scoring instead of the IVF lists (applies to semantic,
  hybrid, hybrid + filters; the index is exact below 200k listings anyway).

The whole timing block runs ``--rounds`` times over the same data. Reported per type and
setting: the median over rounds of p50, p95 and p99 of successful queries only (no error and
at least one result), the status breakdown (ok / empty / error), and p50 shipped / baseline.
A primary-key lookup of one listing row is timed as a reference. PostgreSQL comes from
settings (``AIMARKET_DATABASE_URL``; ``--test-services`` for the test database), in a fresh
schema dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.adapters.sql import PostgresViewDB, SQLiteViewDB, ViewDB
from ops.bench.common import (
    Tally,
    add_common_args,
    bench_schema,
    fresh_schema,
    loadavg,
    median,
    postgres_settings,
    quantiles_ms,
    ratio,
    service_env,
    wait_for_quiet,
)
from projections.search import index as index_module
from projections.search import query as query_module
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


BASELINES: dict[str, tuple[Any, str, tuple[str, ...]]] = {
    # name: (module, setting, the query types it changes)
    "lexical-scan": (query_module, "LEXICAL_SCAN", ("lexical", "hybrid", "hybrid_filtered")),
    "exact": (index_module, "EXACT_MAX_ROWS", ("semantic", "hybrid", "hybrid_filtered")),
}


@contextmanager
def setting(module: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def timed(fn: Callable[[int], Any], i: int, tally: Tally) -> None:
    """One query; counted as ``ok`` only without error and with at least one result."""
    started = time.perf_counter()
    try:
        result = fn(i)
    except Exception as exc:
        label = f"error {getattr(exc, 'code', type(exc).__name__)}"
    else:
        label = "ok" if _found(result) else "empty"
    tally.add(label, time.perf_counter() - started)


def _found(result: Any) -> bool:
    if isinstance(result, dict) and "items" in result:
        return bool(result["items"])
    if isinstance(result, np.ndarray):
        return result.size > 0
    return bool(result)


def row(tally: Tally) -> dict[str, Any]:
    return {**quantiles_ms(tally.latencies), "statuses": dict(tally.outcomes)}


def run(views: ViewDB, runs: int, rounds: int, baseline: str, listings: int) -> dict[str, dict[str, Any]]:
    started = time.perf_counter()
    index = index_for(views)
    print(f"semantic index warm-up ({index.n} vectors) {time.perf_counter() - started:.1f} s", flush=True)
    ids = [r["listing_id"] for r in views.fetchall("SELECT listing_id FROM search_listings LIMIT 1000")]
    embedder = shared_embedder()
    filters = {"category": "health", "price_max": 50_000, "quality_min": 50, "pii_free": True}

    def semantic(i: int) -> np.ndarray:
        with index.lock:
            _near, cos = index.nearest(index.mask({}), embedder.embed_one(QUERIES[i % len(QUERIES)]))
            return np.argpartition(-cos, 200)[:200]

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

    cases: dict[str, Callable[[int], Any]] = {
        "reference_pk_lookup": lambda i: views.fetchone("SELECT * FROM search_listings WHERE listing_id = ?",
                                                        (ids[i % len(ids)],)),
        "lexical": lambda i: lexical(views, parse_query({"q": SUBJECTS[i % len(SUBJECTS)]})),
        "semantic": semantic,
        "hybrid": lambda i: search(views, {"q": QUERIES[i % len(QUERIES)]}),
        "hybrid_filtered": lambda i: search(views, {"q": QUERIES[i % len(QUERIES)], **filters}),
        "browse_filtered": lambda i: search(views, filters),
    }
    module, name, affected = BASELINES[baseline]
    per_round: list[dict[str, dict[str, Any]]] = []
    for n in range(1, rounds + 1):
        results: dict[str, dict[str, Any]] = {}
        for case, fn in cases.items():
            shipped, base = Tally("ok"), Tally("ok")
            paired = case in affected
            for i in range(5):  # warm-up, not counted
                timed(fn, i, Tally("ok"))
                if paired:
                    with setting(module, name, listings):
                        timed(fn, i, Tally("ok"))
            for i in range(runs):
                order = [False, True] if i % 2 == 0 else [True, False]
                for is_baseline in order if paired else [False]:
                    if is_baseline:
                        with setting(module, name, listings):
                            timed(fn, i, base)
                    else:
                        timed(fn, i, shipped)
            results[case] = {"shipped": row(shipped)}
            if paired:
                results[case]["baseline"] = row(base)
        print(json.dumps({"round": n, "loadavg": loadavg(), "results": results}), flush=True)
        per_round.append(results)
    medians = medians_of(per_round)
    medians["_semantic_recall_at_10"] = {"value": round(recall, 3), "ivf": index.ivf is not None}
    return medians


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def medians_of(per_round: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per type and setting: the median over rounds of each percentile; statuses summed."""
    out: dict[str, dict[str, Any]] = {}
    for case in per_round[0]:
        out[case] = {}
        for label in ("shipped", "baseline"):
            rows = [r[case][label] for r in per_round if label in r[case]]
            if not rows:
                continue
            statuses: dict[str, int] = {}
            for r in rows:
                for k, v in r["statuses"].items():
                    statuses[k] = statuses.get(k, 0) + v
            out[case][label] = {**{key: _round(median([r[key] for r in rows if r[key] is not None]))
                                   for key in ("p50_ms", "p95_ms", "p99_ms")}, "statuses": statuses}
        if "baseline" in out[case]:
            out[case]["p50_shipped_vs_baseline"] = ratio(out[case]["shipped"]["p50_ms"], out[case]["baseline"]["p50_ms"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--store", choices=["postgres", "sqlite"], required=True)
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=200, help="timed queries per type (and per setting)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds over the same data; medians reported")
    parser.add_argument("--pool", type=int, default=3000, help="distinct texts embedded")
    parser.add_argument("--baseline", choices=sorted(BASELINES), default="lexical-scan",
                        help="the one setting the baseline changes (see above)")
    args = parser.parse_args()
    settings = None
    if args.store == "postgres":
        settings = postgres_settings({**service_env(args), "AIMARKET_DB_SCHEMA": fresh_schema("bench_search")})
    module, name, _ = BASELINES[args.baseline]
    if args.store == "sqlite" and args.baseline == "lexical-scan":
        print("# LEXICAL_SCAN bounds PostgreSQL's ranking only: on SQLite the baseline runs the same code",
              flush=True)
    with tempfile.TemporaryDirectory() as tmp, bench_schema(settings) if settings else nullcontext():
        views: ViewDB = (PostgresViewDB(settings.pg_conninfo(), schema=settings.db_schema) if settings
                         else SQLiteViewDB(Path(tmp) / "views.sqlite"))
        try:
            results = measure(views, args)
        finally:
            views.close()
    print(json.dumps({"store": args.store, "listings": args.listings, "runs": args.runs, "rounds": args.rounds,
                      "baseline": f"{module.__name__}.{name} = {args.listings} (shipped: {getattr(module, name)})",
                      "loadavg_after": loadavg(), "results": results}, indent=2))
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    """The figures again as a Markdown table (the shape docs/benchmarks.md uses)."""
    lines = ["| type | setting | p50 ms | p95 ms | p99 ms | statuses | p50 shipped / baseline |",
             "|---|---|---|---|---|---|---|"]
    for case, r in results.items():
        if case.startswith("_"):
            continue
        for label in ("shipped", "baseline"):
            if label in r:
                f = r[label]
                statuses = ", ".join(f"{k} {v}" for k, v in f["statuses"].items())
                extra = r.get("p50_shipped_vs_baseline", "") if label == "shipped" else ""
                lines.append(f"| {case} | {label} | {f['p50_ms']} | {f['p95_ms']} | {f['p99_ms']} | {statuses} | {extra} |")
    return "\n".join(lines)


def measure(views: ViewDB, args: argparse.Namespace) -> dict[str, Any]:
    with views.transaction() as tx:
        SearchProjection().create_tables(tx)
    load(views, args.listings, min(args.pool, args.listings))
    quiet = wait_for_quiet(args.quiet_load, args.quiet_wait_s)  # after the load: it is not timed
    print(json.dumps({"before_timing": quiet, "loadavg": loadavg()}), flush=True)
    return run(views, args.runs, args.rounds, args.baseline, args.listings)


if __name__ == "__main__":
    raise SystemExit(main())
