"""What observability costs a request: the traceparent work and the latency histogram's observe,
with prometheus-client's multiprocess mode (what ``aimarket serve`` runs) against in-process
values (the one named setting: ``PROMETHEUS_MULTIPROC_DIR`` set or not), in the same run.

    python -m ops.bench.observability [--requests 200000] [--rounds 5] [--quiet-load 1.5]

Each round runs two fresh interpreters (the setting must be chosen before prometheus-client
makes its first value), alternating which goes first. Each times, per request, exactly what
``api.app.RequestContext`` adds: reading a caller's ``traceparent`` and making the hub's span
(``SpanIds.start``), the header it answers (``TraceContext.traceparent``), the meta every event
records (``api.tracing.event_meta`` on a plain route), and ``RequestLatency.observe`` on a few
routes; then one scrape's merge of the files (multiprocess) or the registry (in-process).
Medians over rounds; nothing here touches the network or a store.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ops.bench.common import add_common_args, loadavg, median, wait_for_quiet

REPO = Path(__file__).resolve().parents[2]
HEADER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ROUTES = ("/v1/channels/{channel_id}/debits", "/v1/purchases", "/healthz", "/v1/search")


def inner(requests: int) -> dict[str, Any]:
    """Time the per-request work in this interpreter (the mode is in the environment)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from api.resources.metrics import request_latency
    from api.tracing import SpanIds, event_meta

    spans, latency = SpanIds(), request_latency()
    req = SimpleNamespace(context=SimpleNamespace(params={}), method="GET", uri_template="/healthz")
    started = time.perf_counter()
    for _ in range(requests):
        trace = spans.start(HEADER)
        _ = trace.traceparent
    trace_us = (time.perf_counter() - started) / requests * 1e6
    req.context.trace = trace
    started = time.perf_counter()
    for _ in range(requests):
        event_meta(req, None)
    meta_us = (time.perf_counter() - started) / requests * 1e6
    started = time.perf_counter()
    for i in range(requests):
        latency.observe(ROUTES[i & 3], "POST", 201, 0.004)
    observe_us = (time.perf_counter() - started) / requests * 1e6
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(latency.histogram)
    started = time.perf_counter()
    scrape = generate_latest(registry)
    scrape_ms = (time.perf_counter() - started) * 1e3
    return {"trace_us": trace_us, "meta_us": meta_us, "observe_us": observe_us, "scrape_ms": scrape_ms,
            "scrape_bytes": len(scrape), "total_us": trace_us + meta_us + observe_us}


def run_mode(mode: str, requests: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory(prefix="aimarket-bench-prom-") as folder:
        if mode == "multiprocess":
            env["PROMETHEUS_MULTIPROC_DIR"] = folder
        out = subprocess.run([sys.executable, "-m", "ops.bench.observability", "--inner", str(requests)], env=env,
                             cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inner", type=int, default=0, help=argparse.SUPPRESS)
    add_common_args(parser, services=False)
    args = parser.parse_args(argv)
    if args.inner:
        print(json.dumps(inner(args.inner)))
        return 0
    wait_for_quiet(args.quiet_load, args.quiet_wait_s)
    load_start = loadavg()
    results: dict[str, list[dict[str, Any]]] = {"in-process": [], "multiprocess": []}
    for round_no in range(args.rounds):
        order = ("in-process", "multiprocess") if round_no % 2 == 0 else ("multiprocess", "in-process")
        for mode in order:
            results[mode].append(run_mode(mode, args.requests))
        row = {m: results[m][-1] for m in results}
        print(f"round {round_no + 1}: " + "; ".join(
            f"{m} trace {r['trace_us']:.2f} us, meta {r['meta_us']:.2f} us, observe {r['observe_us']:.2f} us, "
            f"scrape {r['scrape_ms']:.1f} ms" for m, r in row.items()))
    med = {m: {k: median([r[k] for r in rs]) for k in rs[0]} for m, rs in results.items()}
    print(f"\nrequests per round: {args.requests:,}; rounds: {args.rounds}; load {load_start} -> {loadavg()}")
    print("status: every timed call returned (no errors counted: nothing here can refuse)")
    for mode, m in med.items():
        print(f"median {mode:>12}: traceparent {m['trace_us']:.2f} us + meta {m['meta_us']:.2f} us + "
              f"observe {m['observe_us']:.2f} us = {m['total_us']:.2f} us per request; one scrape "
              f"{m['scrape_ms']:.1f} ms ({m['scrape_bytes']:,} bytes)")
    ratio = med["multiprocess"]["observe_us"] / med["in-process"]["observe_us"]
    print(f"observe, multiprocess / in-process: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
