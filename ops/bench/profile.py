"""Benchmark of local dataset profiling (``node.profiling.profile_path``).

Generates a CSV of realistic mixed columns (ids, timestamps, names, e-mails, phones,
amounts, categories, IPs, a sparse card column and free-text notes with some PII), reused
when already present, then measures in separate child processes:

* baseline: a plain polars batched read of the same file with no analysis;
* profile: the full profile (schema, PII, quality, hashing, description).

Each child reports wall time, its CPU time and its own peak RSS (``ru_maxrss``), so the
figures do not include the generator or the other run.

Usage::

    python ops/bench/profile.py [--path /tmp/aimarket-bench/profile-1g.csv] [--size-mb 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_PATH = "/tmp/aimarket-bench/profile-1g.csv"
CHUNK_ROWS = 250_000
SEED = 20240601

_CHILD_BASELINE = """
import json, resource, sys, time
import polars as pl
start = time.perf_counter()
rows = 0
for batch in pl.scan_csv(sys.argv[1], infer_schema=False).collect_batches(chunk_size=100_000):
    rows += batch.height
elapsed = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rows": rows, "seconds": elapsed, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                  "peak_rss_kb": usage.ru_maxrss}))
"""

_CHILD_PROFILE = """
import json, resource, sys, time
from node.profiling import profile_path
start = time.perf_counter()
report = profile_path(sys.argv[1])
elapsed = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rows": report["rows"], "seconds": elapsed, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                  "peak_rss_kb": usage.ru_maxrss,
                  "quality": report["quality"]["score"], "pii": report["pii"]["kinds_detected"],
                  "verdict": report["pii"]["verdict"]}))
"""

FIRST = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "Wei", "Priya",
         "Carlos", "Fatima", "Yuki", "Olga", "Ahmed", "Sofia", "Lucas", "Emma", "Noah", "Chloe"]
LAST = ["Smith", "Johnson", "Garcia", "Chen", "Kowalski", "Nguyen", "Silva", "Müller", "Okafor", "Rossi",
        "Dubois", "Tanaka", "Ivanova", "Khan", "Larsen", "Brown", "Lopez", "Novak", "Haddad", "Moreau"]
DOMAINS = ["example.com", "mail.org", "corp.net", "web.de", "post.co.uk"]
COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "PL", "SE", "JP"]
STATUS = ["paid", "pending", "refunded", "shipped", "cancelled"]
PHRASES = [
    "Customer asked about delivery times and packaging options for the next order",
    "Left at the front door as requested, no signature needed this time",
    "Please contact {name} regarding the invoice before Friday",
    "Reached out by email {email} about a missing item",
    "Duplicate charge reported, refund processed by support team",
    "Gift wrap requested, include a handwritten note for the recipient",
]
# A few Luhn-valid test card numbers (public test PANs), placed in a sparse column.
CARDS = ["4111 1111 1111 1111", "5500 0000 0000 0004", "3400 0000 0000 009", "6011 0000 0000 0004"]


def _chunk(rows: int, offset: int, rng) -> pl.DataFrame:  # noqa: F821 - polars imported lazily
    import numpy as np
    import polars as pl

    first = np.array(FIRST)[rng.integers(0, len(FIRST), rows)]
    last = np.array(LAST)[rng.integers(0, len(LAST), rows)]
    frame = pl.DataFrame({"first": first, "last": last, "n": rng.integers(1, 9999, rows)})
    frame = frame.with_columns(
        pl.int_range(offset, offset + rows).alias("order_id"),
        ((pl.lit(1_700_000_000) + pl.int_range(offset, offset + rows) * 7) * 1_000_000).alias("t"),
    )
    notes = np.array(PHRASES)[rng.integers(0, len(PHRASES), rows)]
    cards = np.where(rng.random(rows) < 0.02, np.array(CARDS)[rng.integers(0, len(CARDS), rows)], "")
    return frame.select(
        "order_id",
        pl.col("t").cast(pl.Datetime("us")).dt.strftime("%Y-%m-%dT%H:%M:%S").alias("created_at"),
        pl.format("{} {}", "first", "last").alias("customer_name"),
        pl.format("{}.{}{}@{}", pl.col("first").str.to_lowercase(), pl.col("last").str.to_lowercase(), "n",
                  pl.lit(DOMAINS[0])).alias("email"),
        pl.format("+1 415-555-{}", (pl.col("n") % 10000).cast(pl.String).str.zfill(4)).alias("phone"),
        pl.Series("country", np.array(COUNTRIES)[rng.integers(0, len(COUNTRIES), rows)]),
        pl.Series("amount", np.round(rng.gamma(2.0, 40.0, rows), 2)),
        pl.Series("quantity", rng.integers(1, 20, rows)),
        pl.Series("status", np.array(STATUS)[rng.integers(0, len(STATUS), rows)]),
        pl.format("{}.{}.{}.{}", *[pl.Series(rng.integers(1, 255, rows)) for _ in range(4)]).alias("client_ip"),
        pl.Series("card_on_file", cards).replace("", None),
        pl.Series("notes", notes)
        .str.replace("{name}", "Mary Smith", literal=True)
        .str.replace("{email}", "help@example.com", literal=True),
    )


def generate(path: Path, size_mb: int) -> None:
    """Write a CSV of about ``size_mb`` MiB to ``path`` (skipped if it already exists)."""
    import numpy as np

    if path.exists() and path.stat().st_size >= size_mb * 1024 * 1024 * 0.95:
        print(f"reusing {path} ({path.stat().st_size / 1e6:.0f} MB)")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    target = size_mb * 1024 * 1024
    tmp = path.with_suffix(".tmp")
    started = time.perf_counter()
    with open(tmp, "wb") as handle:
        offset = 0
        while handle.tell() < target:
            _chunk(CHUNK_ROWS, offset, rng).write_csv(handle, include_header=offset == 0)
            offset += CHUNK_ROWS
    tmp.rename(path)
    print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB, {offset:,} rows) "
          f"in {time.perf_counter() - started:.1f} s")


def _run_child(code: str, path: Path) -> dict:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Generate (or reuse) the file, run baseline and profile, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default=DEFAULT_PATH)
    parser.add_argument("--size-mb", type=int, default=1024)
    args = parser.parse_args()
    path = Path(args.path)
    generate(path, args.size_mb)
    size_mb = path.stat().st_size / 1e6
    results = {"baseline": _run_child(_CHILD_BASELINE, path), "profile": _run_child(_CHILD_PROFILE, path)}
    print(f"file: {path}  {size_mb:,.0f} MB  cpus: {os.cpu_count()}")
    for label, result in results.items():
        seconds = result["seconds"]
        print(f"{label:<9} rows {result['rows']:>12,}  {seconds:7.2f} s  "
              f"{result['rows'] / seconds:>12,.0f} rows/s  {size_mb / seconds:7.1f} MB/s  "
              f"cpu {result['cpu_seconds']:6.1f} s  peak RSS {result['peak_rss_kb'] / 1024:7.0f} MB")
    ratio = results["profile"]["seconds"] / results["baseline"]["seconds"]
    print(f"profile/baseline time ratio: {ratio:.2f}x")
    # Wall time suffers when other work shares the machine; CPU seconds (user + system,
    # including interpreter start-up and imports) are the steadier figure to compare.
    load = os.getloadavg()[0]
    print(f"load average at end: {load:.2f} on {os.cpu_count()} cpus")
    print(f"profile: quality {results['profile']['quality']}, verdict {results['profile']['verdict']}, "
          f"pii {results['profile']['pii']}")


if __name__ == "__main__":
    main()
