"""Debit throughput through the HTTP API: gunicorn on PostgreSQL, many concurrent clients.

    python3 ops/bench/debits.py --clients 64 --seconds 10 --channels 64 [--workers 1]

Runs the same load twice in one run against fresh schemas: the baseline (one transaction
per debit, ``AIMARKET_DEBIT_BATCH_MS=0``) and group commit (``AIMARKET_DEBIT_BATCH_MS=2``).
Channels are funded through the real card path (loopback Stripe stub, signed webhook). The
client is a raw asyncio HTTP/1.1 keep-alive loop (one request in flight per connection); it
shares the two cores with the server, so figures are a floor. After each run every channel's
spend is checked against the debits acknowledged with 201: any difference is an overdraft
or a lost debit and fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.stubs import (  # noqa: E402  # noqa: E402
    DEFAULT_API_KEY,
    DEFAULT_WEBHOOK_SECRET,
    StripeStub,
    payment_intent_succeeded_event,
    sign_webhook,
)

PG_URL = os.environ.get("AIMARKET_BENCH_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AIMARKET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def start_server(port: int, schema: str, stub_url: str, batch_ms: float, workers: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "AIMARKET_DATABASE_URL": PG_URL, "AIMARKET_DB_SCHEMA": schema,
           "AIMARKET_SECRET": "ef" * 32, "AIMARKET_BCRYPT_ROUNDS": "4", "AIMARKET_BIND": f"127.0.0.1:{port}",
           "AIMARKET_HUB_URL": f"http://127.0.0.1:{port}", "AIMARKET_STRIPE_API_KEY": DEFAULT_API_KEY,
           "AIMARKET_STRIPE_WEBHOOK_SECRET": DEFAULT_WEBHOOK_SECRET, "AIMARKET_STRIPE_API_BASE": stub_url,
           "AIMARKET_DEBIT_BATCH_MS": str(batch_ms), "AIMARKET_WEB_WORKERS": str(workers),
           "AIMARKET_WEB_THREADS": str(threads), "AIMARKET_PROJECTIONS_IN_WEB": "no",
           "AIMARKET_REDIS_URL": REDIS_URL}
    code = "from ops.settings import load_settings; from ops.serve import HubServer; HubServer(load_settings()).run()"
    log = open(f"/tmp/bench-debits-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=log)
    for _ in range(200):
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def setup(base: str, stub: StripeStub, channels: int, deposit: int) -> tuple[str, str, list[str]]:
    s = requests.Session()
    ids = {}
    for role in ("buyer", "seller"):
        email = f"{role}-{uuid.uuid4().hex[:8]}@bench.test"
        r = s.post(f"{base}/v1/accounts", json={"email": email, "password": "correct horse battery",
                                                "roles": [role]})
        ids[role] = r.json()["id"]
        token = s.post(f"{base}/v1/sessions", json={"email": email, "password": "correct horse battery"}).json()
        ids[f"{role}_token"] = token["access_token"]
    headers = {"Authorization": f"Bearer {ids['buyer_token']}"}
    out = []
    for _ in range(channels):
        r = s.post(f"{base}/v1/channels", json={"rail": "card", "currency": "USD", "amount_minor": deposit},
                   headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
        intent = stub.succeed_payment_intent(r.json()["payment"]["payment_intent_id"])
        body = payment_intent_succeeded_event(intent)
        w = s.post(f"{base}/v1/webhooks/stripe", data=body,
                   headers={"Stripe-Signature": sign_webhook(body, DEFAULT_WEBHOOK_SECRET),
                            "Content-Type": "application/json"})
        assert w.json()["credited"], w.text
        out.append(r.json()["id"])
    return ids["buyer_token"], ids["seller"], out


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one HTTP/1.1 request on a keep-alive connection, read the answer; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def client(port: int, token: str, seller: str, channels: list[str], n: int, stop_at: float,
                 latencies: list[float], acked: dict[str, int], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    while time.perf_counter() < stop_at:
        channel = channels[(n + i) % len(channels)]
        body = json.dumps({"amount_minor": 1, "seller_account_id": seller}).encode()
        request = (f"POST /v1/channels/{channel}/debits HTTP/1.1\r\nHost: bench\r\n"
                   f"Authorization: Bearer {token}\r\nIdempotency-Key: c{n}-{i}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        t0 = time.perf_counter()
        status = await round_trip(reader, writer, request)
        latencies.append(time.perf_counter() - t0)
        statuses[status] = statuses.get(status, 0) + 1
        if status == 201:
            acked[channel] = acked.get(channel, 0) + 1
        i += 1
    writer.close()


async def health_client(port: int, stop_at: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        await round_trip(reader, writer, request)
        latencies.append(time.perf_counter() - t0)
    writer.close()


async def ceiling(port: int, clients: int, seconds: float) -> dict:
    """The same stack and client on ``GET /healthz`` (no auth, no store): the HTTP ceiling."""
    latencies: list[float] = []
    warm_stop = time.perf_counter() + 1.0
    await asyncio.gather(*(health_client(port, warm_stop, []) for _ in range(clients)))
    start = time.perf_counter()
    await asyncio.gather(*(health_client(port, start + seconds, latencies) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(sorted(latencies), n=100)
    return {"mode": "ceiling: GET /healthz", "requests": len(latencies), "per_s": round(len(latencies) / elapsed),
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}


async def load(port: int, token: str, seller: str, channels: list[str], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    acked: dict[str, int] = {}
    statuses: dict[int, int] = {}
    warm_stop = time.perf_counter() + 1.0  # warm caches and connections, not counted
    await asyncio.gather(*(client(port, token, seller, channels, n, warm_stop, [], acked, {})
                           for n in range(clients)))
    start = time.perf_counter()
    await asyncio.gather(*(client(port, token, seller, channels, 1000 + n, start + seconds, latencies, acked,
                                  statuses) for n in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 100 else [0.0] * 99
    return {"requests": len(latencies), "per_s": round(len(latencies) / elapsed), "statuses": statuses,
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2), "acked": acked}


def run(mode: str, batch_ms: float, args: argparse.Namespace, stub: StripeStub, port: int) -> dict:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    proc = start_server(port, schema, stub.url, batch_ms, args.workers, args.threads)
    try:
        base = f"http://127.0.0.1:{port}"
        if args.ceiling:
            print(json.dumps({**asyncio.run(ceiling(port, args.clients, args.seconds / 2)), "server": mode}),
                  flush=True)
        token, seller, channels = setup(base, stub, args.channels, 10**9)
        result = asyncio.run(load(port, token, seller, channels, args.clients, args.seconds))
        headers = {"Authorization": f"Bearer {token}"}
        overdrafts = 0
        for channel in channels:
            view = requests.get(f"{base}/v1/channels/{channel}", headers=headers, timeout=30).json()
            if view["spent_minor"] != result["acked"].get(channel, 0) or view["spent_minor"] > view["deposit_minor"]:
                overdrafts += 1
        result.update(mode=mode, batch_ms=batch_ms, mismatched_channels=overdrafts)
        del result["acked"]
        return result
    finally:
        proc.terminate()
        proc.wait(15)
        import psycopg

        with psycopg.connect("host=127.0.0.1 dbname=test user=root", autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--channels", type=int, default=64)
    # One worker is the fastest shape on two cores: a second one has to forward half the
    # debits to the channels' owners (docs/benchmarks.md has both).
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--port", type=int, default=18431)
    parser.add_argument("--batch-ms", type=float, default=2.0, help="group-commit window")
    parser.add_argument("--ceiling", action="store_true", help="also time GET /healthz on each server")
    args = parser.parse_args()
    with StripeStub() as stub:
        results = [run("baseline: one commit per debit", 0, args, stub, args.port),
                   run("group commit", args.batch_ms, args, stub, args.port + 1)]
    for r in results:
        print(json.dumps(r))
    baseline, grouped = results
    print(json.dumps({"group_commit_vs_baseline": round(grouped["per_s"] / max(baseline["per_s"], 1), 1),
                      "target": ">= 5000/s, p99 <= 20 ms",
                      "met": grouped["per_s"] >= 5000 and grouped["p99_ms"] <= 20}))
    if any(r["mismatched_channels"] for r in results):
        raise SystemExit("overdraft or lost debit detected")


if __name__ == "__main__":
    main()
