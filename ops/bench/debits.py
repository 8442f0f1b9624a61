"""Debit throughput through the HTTP API: the hub under gunicorn on PostgreSQL, many clients.

    python3 ops/bench/debits.py --test-services --clients 64 --seconds 10 --channels 64 --rounds 3

Each round runs three servers, each on a fresh schema, with the same settings except where
named:

* baseline: ``AIMARKET_DEBIT_BATCH_MS=0``, one debit per commit. The only setting that
  differs from the next line: every debit goes through the same ``DebitBatcher`` and saver
  (``ops.bootstrap.build_debit_batcher``), a window of 0 commits each debit alone;
* group commit: ``AIMARKET_DEBIT_BATCH_MS=--batch-ms`` (2 ms);
* group commit + projections: the same server, with the projection runners running beside
  it (``--projections process``: their own process, as ``aimarket worker`` runs them;
  ``web``: inside the hub, ``AIMARKET_PROJECTIONS_IN_WEB=yes``). Reported: how many events
  each projection was behind when the load stopped and how long it took to catch up.

The order of the three alternates from round to round. Only debits answered 201 count:
throughput is 201s per second, latency percentiles are of 201s, and every answer is in the
status breakdown (HTTP status and problem code). After each run every channel's spend is
checked against the 201s it got (and, with projections, the balances read model too): any
difference is an overdraft or a lost debit and fails the bench.

Services come from settings (``AIMARKET_DATABASE_URL``, ``AIMARKET_REDIS_URL``: debit
routing, as in production); ``--test-services`` uses the test database and Redis instead.
Channels are funded through the real card path (the loopback Stripe stub,
``ops/stubs``, and the signed webhook). The client is a raw asyncio HTTP/1.1 keep-alive loop
(one request in flight per connection) sharing the machine with the server: figures are a
floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ops.bench.common import (  # noqa: E402
    add_common_args,
    bench_schema,
    closed_loop,
    emit,
    fresh_schema,
    health_request,
    loadavg,
    median,
    postgres_settings,
    ratio,
    service_env,
    wait_for_quiet,
    wait_http_ok,
)
from ops.settings import Settings  # noqa: E402
from ops.stubs import (  # noqa: E402
    DEFAULT_API_KEY,
    DEFAULT_WEBHOOK_SECRET,
    StripeStub,
    payment_intent_succeeded_event,
    sign_webhook,
)

TARGET_PER_S = 5000
TARGET_P99_MS = 20.0
BASELINE, GROUPED, PROJECTED = "baseline", "group_commit", "group_commit+projections"

SERVE = "from ops.settings import load_settings; from ops.serve import HubServer; HubServer(load_settings()).run()"
PROJECT = """
import signal, threading
from api.logging import configure
from ops.bootstrap import build_runtime
from ops.settings import load_settings
runtime = build_runtime(load_settings())
configure(runtime.settings.log_format)
runtime.start_projections()
stop = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
print("projections running", flush=True)
stop.wait()
runtime.close()
"""


# -- processes -------------------------------------------------------------------------------
def server_env(base: dict[str, str], schema: str, port: int, stub_url: str, batch_ms: float, args: argparse.Namespace,
               projections_in_web: bool) -> dict[str, str]:
    return {**base, "AIMARKET_DB_SCHEMA": schema, "AIMARKET_SECRET": "ef" * 32, "AIMARKET_BCRYPT_ROUNDS": "4",
            "AIMARKET_BIND": f"127.0.0.1:{port}", "AIMARKET_HUB_URL": f"http://127.0.0.1:{port}",
            "AIMARKET_STRIPE_API_KEY": DEFAULT_API_KEY, "AIMARKET_STRIPE_WEBHOOK_SECRET": DEFAULT_WEBHOOK_SECRET,
            "AIMARKET_STRIPE_API_BASE": stub_url, "AIMARKET_DEBIT_BATCH_MS": str(batch_ms),
            "AIMARKET_WEB_WORKERS": str(args.workers), "AIMARKET_WEB_THREADS": str(args.threads),
            "AIMARKET_PROJECTIONS_IN_WEB": "yes" if projections_in_web else "no"}


def start(code: str, env: dict[str, str], log_name: str) -> subprocess.Popen:
    log = open(f"/tmp/{log_name}.log", "w")  # the child holds it for its life
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=log)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# -- the load ------------------------------------------------------------------------------
def setup(base: str, stub: StripeStub, channels: int, deposit: int) -> tuple[str, str, list[str]]:
    """A buyer with ``channels`` card channels funded through the webhook, and a seller."""
    s = requests.Session()
    ids = {}
    for role in ("buyer", "seller"):
        email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
        r = s.post(f"{base}/v1/accounts", json={"email": email, "password": "correct horse battery", "roles": [role]})
        r.raise_for_status()
        ids[role] = r.json()["id"]
        token = s.post(f"{base}/v1/sessions", json={"email": email, "password": "correct horse battery"})
        token.raise_for_status()
        ids[f"{role}_token"] = token.json()["access_token"]
    headers = {"Authorization": f"Bearer {ids['buyer_token']}"}
    out = []
    for _ in range(channels):
        r = s.post(f"{base}/v1/channels", json={"rail": "card", "currency": "USD", "amount_minor": deposit},
                   headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
        r.raise_for_status()
        intent = stub.succeed_payment_intent(r.json()["payment"]["payment_intent_id"])
        body = payment_intent_succeeded_event(intent)
        w = s.post(f"{base}/v1/webhooks/stripe", data=body,
                   headers={"Stripe-Signature": sign_webhook(body, DEFAULT_WEBHOOK_SECRET),
                            "Content-Type": "application/json"})
        if not w.ok or not w.json().get("credited"):
            raise SystemExit(f"funding a channel failed: {w.status_code} {w.text}")
        out.append(r.json()["id"])
    return ids["buyer_token"], ids["seller"], out


def debit_load(port: int, token: str, seller: str, channels: list[str], args: argparse.Namespace) -> dict[str, Any]:
    body = json.dumps({"amount_minor": 1, "seller_account_id": seller}).encode()
    acked: dict[str, int] = {}

    def channel_of(n: int, i: int) -> str:
        return channels[(n + i) % len(channels)]

    def request(n: int, i: int) -> bytes:
        return (f"POST /v1/channels/{channel_of(n, i)}/debits HTTP/1.1\r\nHost: bench\r\n"
                f"Authorization: Bearer {token}\r\nIdempotency-Key: c{n}-{i}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    def acknowledged(n: int, i: int) -> None:
        acked[channel_of(n, i)] = acked.get(channel_of(n, i), 0) + 1

    result = asyncio.run(closed_loop(port, args.clients, args.seconds, request, 201, acknowledged))
    result["acked"] = acked
    return result


def mismatched_channels(base: str, token: str, channels: list[str], acked: dict[str, int]) -> int:
    """Channels whose spend (from the store) is not exactly the 201s they got, or overdrawn."""
    bad = 0
    for channel in channels:
        r = requests.get(f"{base}/v1/channels/{channel}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        r.raise_for_status()
        view = r.json()
        if view["spent_minor"] != acked.get(channel, 0) or view["spent_minor"] > view["deposit_minor"]:
            bad += 1
    return bad


# -- the projections -----------------------------------------------------------------------
class Lag:
    """How many events of its topics each projection has yet to apply (read from the database)."""

    def __init__(self, settings: Settings) -> None:
        import psycopg

        from projections.registry import all_projections

        self.conn = psycopg.connect(settings.pg_conninfo(), autocommit=True,
                                    options=f"-c search_path={settings.db_schema}")
        self.topics = {p.name: p.topics for p in all_projections()}
        row = self.conn.execute(
            "SELECT c.table_name FROM information_schema.columns c JOIN information_schema.columns t"
            " ON t.table_schema = c.table_schema AND t.table_name = c.table_name AND t.column_name = 'topic'"
            " WHERE c.table_schema = %s AND c.column_name = 'notification_id'", (settings.db_schema,)).fetchone()
        if row is None:
            raise SystemExit("no event table found in the bench schema")
        self.table = row[0]

    def behind(self) -> dict[str, int]:
        positions = dict(self.conn.execute("SELECT name, position FROM projection_tracking").fetchall())
        out = {}
        for name, topics in self.topics.items():
            position = positions.get(name, 0)
            where = "notification_id > %s" + (" AND topic = ANY(%s)" if topics else "")
            params = (position, topics) if topics else (position,)
            out[name] = self.conn.execute(f'SELECT count(*) FROM "{self.table}" WHERE {where}', params).fetchone()[0]
        return out

    def wait_caught_up(self, timeout_s: float) -> float | None:
        """Seconds until every projection has applied everything (None on timeout)."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout_s:
            if not any(self.behind().values()):
                return round(time.perf_counter() - started, 2)
            time.sleep(0.1)
        return None

    def balances_mismatch(self, acked: dict[str, int]) -> int:
        spent = dict(self.conn.execute("SELECT channel_id, spent_minor FROM money_channels").fetchall())
        return sum(1 for channel, n in acked.items() if spent.get(channel) != n)

    def close(self) -> None:
        self.conn.close()


# -- one run ---------------------------------------------------------------------------------
def run(mode: str, args: argparse.Namespace, stub: StripeStub, port: int) -> dict[str, Any]:
    projections = mode == PROJECTED
    batch_ms = 0 if mode == BASELINE else args.batch_ms
    env = server_env(service_env(args, redis=True), fresh_schema("bench_debits"), port, stub.url, batch_ms, args,
                     projections_in_web=projections and args.projections == "web")
    settings = postgres_settings(env)
    record: dict[str, Any] = {"mode": mode, "AIMARKET_DEBIT_BATCH_MS": batch_ms, "workers": args.workers,
                              "redis_routing": bool(settings.redis_url), "loadavg_before": loadavg()}
    if projections:
        record["projections"] = args.projections
    with bench_schema(settings):
        hub = start(SERVE, env, f"bench-debits-{port}")
        runner = None
        lag = None
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/healthz", hub)
            base = f"http://127.0.0.1:{port}"
            if projections and args.projections == "process":
                runner = start(PROJECT, env, f"bench-debits-projections-{port}")
            if args.ceiling:
                ceiling = asyncio.run(closed_loop(port, args.clients, args.seconds / 2, health_request, 200))
                record["ceiling_get_healthz"] = {k: ceiling[k] for k in ("ok_per_s", "p50_ms", "p99_ms", "statuses")}
            token, seller, channels = setup(base, stub, args.channels, 10**9)
            if projections:
                lag = Lag(settings)
                if lag.wait_caught_up(120) is None:
                    raise SystemExit(f"projections did not catch up with the setup: {lag.behind()}")
            result = debit_load(port, token, seller, channels, args)
            if lag is not None:
                behind = lag.behind()
                record["projections_behind_at_end"] = {"events": sum(behind.values()), **behind}
                record["projections_caught_up_s"] = lag.wait_caught_up(args.catch_up_timeout_s)
            acked = result.pop("acked")
            record.update(result)
            record["mismatched_channels"] = mismatched_channels(base, token, channels, acked)
            if lag is not None and record["projections_caught_up_s"] is not None:
                record["balances_view_mismatched_channels"] = lag.balances_mismatch(acked)
        finally:
            if lag is not None:
                lag.close()
            stop(runner)
            stop(hub)
    record["loadavg_after"] = loadavg()
    return record


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(mode: str, key: str) -> float | None:
        return median([r[key] for r in runs if r["mode"] == mode and r.get(key) is not None])

    per_mode = {mode: {"median_ok_per_s": med(mode, "ok_per_s"), "median_p50_ms": med(mode, "p50_ms"),
                       "median_p99_ms": med(mode, "p99_ms"), "runs": sum(1 for r in runs if r["mode"] == mode)}
                for mode in (BASELINE, GROUPED, PROJECTED)}
    per_mode[PROJECTED]["median_caught_up_s"] = med(PROJECTED, "projections_caught_up_s")
    rounds = sorted({r["round"] for r in runs})
    by = {(r["round"], r["mode"]): r for r in runs}
    round_ratios = [ratio(by[(n, GROUPED)]["ok_per_s"], by[(n, BASELINE)]["ok_per_s"], 1) for n in rounds
                    if (n, GROUPED) in by and (n, BASELINE) in by]
    grouped = per_mode[GROUPED]
    met = (grouped["median_ok_per_s"] or 0) >= TARGET_PER_S and (grouped["median_p99_ms"] or 1e9) <= TARGET_P99_MS
    return {"summary": per_mode,
            "group_commit_vs_baseline": ratio(grouped["median_ok_per_s"], per_mode[BASELINE]["median_ok_per_s"], 1),
            "per_round_ratios": round_ratios, "target": f">= {TARGET_PER_S} debits/s (201), p99 <= {TARGET_P99_MS} ms",
            "met": met}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--clients", type=int, default=64, help="concurrent keep-alive connections")
    parser.add_argument("--seconds", type=float, default=10, help="timed load per run (after 1 s of warm-up)")
    parser.add_argument("--channels", type=int, default=64, help="card channels the debits spread over")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three runs; medians are reported")
    # One worker is the fastest shape on two cores: a second one has to forward half the
    # debits to the channels' owners (docs/benchmarks.md has both).
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (AIMARKET_WEB_WORKERS)")
    parser.add_argument("--threads", type=int, default=32, help="AIMARKET_WEB_THREADS")
    parser.add_argument("--port", type=int, default=18431, help="first loopback port (one per run)")
    parser.add_argument("--batch-ms", type=float, default=2.0, help="group-commit window (AIMARKET_DEBIT_BATCH_MS)")
    parser.add_argument("--projections", choices=["process", "web"], default="process",
                        help="where the third run's projection runners run (default: their own process)")
    parser.add_argument("--no-projections", action="store_true", help="skip the run with projections")
    parser.add_argument("--catch-up-timeout-s", type=float, default=600)
    parser.add_argument("--ceiling", action="store_true", help="also time GET /healthz on each server first")
    args = parser.parse_args()
    postgres_settings(service_env(args, redis=True))  # fail early on missing settings
    quiet = wait_for_quiet(args.quiet_load, args.quiet_wait_s)
    emit({"bench": "debits", "cpus": os.cpu_count(), **quiet, "clients": args.clients, "seconds": args.seconds,
          "channels": args.channels, "rounds": args.rounds})
    modes = [BASELINE, GROUPED] + ([] if args.no_projections else [PROJECTED])
    runs = []
    port = args.port
    with StripeStub() as stub:
        for n in range(1, args.rounds + 1):
            for mode in modes if n % 2 else list(reversed(modes)):
                record = {"round": n, **run(mode, args, stub, port)}
                emit(record)
                runs.append(record)
                port += 1
    emit(summary(runs))
    if any(r["mismatched_channels"] or r.get("balances_view_mismatched_channels") for r in runs):
        raise SystemExit("overdraft or lost debit detected")


if __name__ == "__main__":
    main()
