"""Benchmark of local dataset profiling (``node.profiling.profile_path``).

Generates a CSV of realistic mixed columns (ids, timestamps, names, e-mails, phones,
amounts, categories, IPs, a sparse card column and free-text notes with some PII), reused
when already present, then measures in separate child processes:

* baseline: a plain polars batched read of the same file with no analysis;
* profile: the full profile (schema, PII, quality, hashing, description).

Both read the same file through the same page cache; over ``--rounds`` the order alternates
(baseline first in odd rounds, profile first in even ones), so neither always finds the
cache warmed by the other. Each child reports wall time, its CPU time and its own peak RSS
(``ru_maxrss``), so the figures do not include the generator or the other run. Only runs
that succeed count; medians over them, and the ratio of the medians, are reported.

Usage::

    python ops/bench/profile.py --rounds 5 [--path /tmp/aimarket-bench/profile-1g.csv] [--size-mb 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    """One measurement in a child process: its figures, or ``{"failed": ...}``."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    if done.returncode:
        return {"failed": f"exit {done.returncode}", "stderr": done.stderr[-2000:]}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"failed": "no result line", "stderr": done.stderr[-2000:]}


def _line(label: str, result: dict, size_mb: float) -> str:
    seconds = result["seconds"]
    return (f"{label:<9} rows {result['rows']:>12,}  {seconds:7.2f} s  {result['rows'] / seconds:>12,.0f} rows/s  "
            f"{size_mb / seconds:7.1f} MB/s  cpu {result['cpu_seconds']:6.1f} s  "
            f"peak RSS {result['peak_rss_kb'] / 1024:7.0f} MB")


def main() -> None:
    """Generate (or reuse) the file, run baseline and profile in alternating order, print medians."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ops.bench.common import add_common_args, wait_for_quiet

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, services=False)
    parser.add_argument("--path", default=DEFAULT_PATH)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5, help="baseline/profile pairs, alternating order")
    args = parser.parse_args()
    path = Path(args.path)
    generate(path, args.size_mb)
    size_mb = path.stat().st_size / 1e6
    wait_for_quiet(args.quiet_load, args.quiet_wait_s)
    print(f"file: {path}  {size_mb:,.0f} MB  cpus: {os.cpu_count()}  load {os.getloadavg()[0]:.2f}", flush=True)
    children = {"baseline": _CHILD_BASELINE, "profile": _CHILD_PROFILE}
    results: dict[str, list[dict]] = {"baseline": [], "profile": []}
    failures: dict[str, int] = {"baseline": 0, "profile": 0}
    expected_rows = None
    for n in range(1, args.rounds + 1):
        order = ["baseline", "profile"] if n % 2 else ["profile", "baseline"]
        for label in order:
            result = _run_child(children[label], path)
            if expected_rows is None and "rows" in result:
                expected_rows = result["rows"]
            if "failed" in result or result["rows"] != expected_rows:
                failures[label] += 1
                print(f"round {n} {label:<9} FAILED: {result.get('failed') or 'row count differs'}\n"
                      f"{result.get('stderr', '')}", flush=True)
                continue
            results[label].append(result)
            print(f"round {n} {_line(label, result, size_mb)}  load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"successful runs: baseline {len(results['baseline'])}/{args.rounds}, "
          f"profile {len(results['profile'])}/{args.rounds}; failed: {failures}")
    medians = {}
    for label, runs in results.items():
        if not runs:
            continue
        medians[label] = {key: statistics.median(r[key] for r in runs)
                          for key in ("seconds", "cpu_seconds", "peak_rss_kb")}
        medians[label]["rows"] = expected_rows
        print(f"median   {_line(label, medians[label], size_mb)}")
    if len(medians) == 2:
        ratio = medians["profile"]["seconds"] / medians["baseline"]["seconds"]
        print(f"profile/baseline median time ratio: {ratio:.2f}x")
    # Wall time suffers when other work shares the machine; CPU seconds (user + system,
    # including interpreter start-up and imports) are the steadier figure to compare.
    print(f"load average at end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
    if results["profile"]:
        last = results["profile"][-1]
        print(f"profile: quality {last['quality']}, verdict {last['verdict']}, pii {last['pii']}")
    if failures["profile"] or failures["baseline"]:
        raise SystemExit("some runs failed")


if __name__ == "__main__":
    main()
