"""Purchase throughput through the HTTP API, against debits in the same run: the hub under
gunicorn on PostgreSQL, many clients.

    python3 ops/bench/purchases.py --test-services --clients 64 --seconds 10 --channels 64 --rounds 3

Each round runs two servers, each on a fresh schema, started exactly as ``ops/bench/debits.py``
starts its group-commit run (``AIMARKET_DEBIT_BATCH_MS=--batch-ms``, one gunicorn worker,
Redis debit routing when configured), with the same setup: a buyer with ``--channels`` card
channels funded through the loopback Stripe stub and the signed webhook, and a seller with an
enrolled device and ``--listings`` deliverable listings priced 1 minor unit. The one named
setting that differs is the route the clients call:

* ``debits``: ``POST /v1/channels/{id}/debits``, 1 unit paid to the listings' seller;
* ``purchases``: ``POST /v1/purchases`` of a listing (1 unit), each answer carrying a signed
  delivery token (a purchase and a debit are batch items of the same group commit).

The order alternates from round to round. Only 201s count: throughput is 201s per second,
latency percentiles are of 201s, every answer is in the status breakdown. After each run
every channel's spend must equal the 201s it got, and (purchases) the log must hold exactly
one ``Purchased`` event per 201: any difference fails the bench. Reported: medians over the
rounds, and the ratio purchases / debits. The client shares the machine with the server:
figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from domain.model.blocks import BlockCommitment, block_hash  # noqa: E402
from domain.model.delivery import jwk_thumbprint  # noqa: E402
from domain.model.device import enrollment_message  # noqa: E402
from domain.model.keys import KxPrivateKey, SigningKey, b64url  # noqa: E402
from domain.model.tokens import encode_device_jwt  # noqa: E402
from node.publishing import publish_credential  # noqa: E402
from ops.bench.common import (  # noqa: E402
    add_common_args,
    bench_schema,
    closed_loop,
    emit,
    fresh_schema,
    loadavg,
    median,
    postgres_settings,
    ratio,
    service_env,
    wait_for_quiet,
    wait_http_ok,
)
from ops.bench.debits import SERVE, mismatched_channels, server_env, setup, start, stop  # noqa: E402
from ops.stubs import StripeStub  # noqa: E402

TARGET_PER_S = 3000
TARGET_P99_MS = 30.0
TARGET_SHARE = 0.5
DEBITS, PURCHASES = "debits", "purchases"
PASSWORD = "correct horse battery"


# -- the seller: a device and deliverable listings ---------------------------------------------
def seller_with_listings(base: str, count: int) -> tuple[str, list[str]]:
    """A seller account, an enrolled device, ``count`` listings (1 unit, a delivery commitment)."""
    s = requests.Session()
    email = f"seller-{uuid.uuid4().hex[:8]}@example.com"
    seller = s.post(f"{base}/v1/accounts", json={"email": email, "password": PASSWORD, "roles": ["seller"]})
    seller.raise_for_status()
    session = s.post(f"{base}/v1/sessions", json={"email": email, "password": PASSWORD}).json()["access_token"]
    api_key = s.post(f"{base}/v1/api-keys", json={"name": "bench node"},
                     headers={"Authorization": f"Bearer {session}"}).json()["secret"]
    auth = {"Authorization": f"Bearer {api_key}"}
    key, kx = SigningKey.generate(), KxPrivateKey.generate()
    fields = {"challenge": s.post(f"{base}/v1/devices/challenges", json={}, headers=auth).json()["challenge"],
              "name": "bench", "endpoint": "http://127.0.0.1:9090", "public_key": key.verify_key.to_multibase(),
              "kx_public_key": kx.public_key.to_multibase()}
    signature = b64url(key.sign(enrollment_message(account_id=seller.json()["id"], **fields)))
    device = s.post(f"{base}/v1/devices", json={**fields, "signature": signature}, headers=auth)
    device.raise_for_status()
    payload = os.urandom(3 * 4096)
    hashes = [block_hash(payload[i:i + 4096]) for i in range(0, len(payload), 4096)]
    sri = "sha256-" + base64.b64encode(hashlib.sha256(payload).digest()).decode()
    delivery = {"object_hash": sri, "size_bytes": len(payload),
                "blocks": BlockCommitment.build(len(payload), 4096, hashes).to_json()}
    listings = []
    for n in range(count):
        item = {"title": f"bench dataset {n}", "description": "", "kind": "dataset", "category": "bench",
                "tags": [], "licence": "CC-BY-4.0", "price_minor": 1, "currency": "USD", "content_hash": sri,
                "delivery": delivery}
        token = encode_device_jwt(key.export_seed(), kid=key.key_id, device_id=device.json()["id"], audience=base,
                                  iat_s=int(time.time()), jti=uuid.uuid4().hex, ttl_s=120)
        r = s.post(f"{base}/v1/listings", json=publish_credential(key, item, f"bench-{n}"),
                   headers={"Authorization": f"Bearer {token}"})
        if r.status_code != 201:
            raise SystemExit(f"publishing a listing failed: {r.status_code} {r.text}")
        listings.append(r.json()["id"])
    return seller.json()["id"], listings


# -- the load ----------------------------------------------------------------------------------
def load(route: str, port: int, token: str, seller: str, channels: list[str], listings: list[str],
         args: argparse.Namespace) -> dict[str, Any]:
    debit = json.dumps({"amount_minor": 1, "seller_account_id": seller}).encode()
    # One buyer key per client (the hub checks the thumbprint's shape, not its uniqueness), made
    # before the clock starts: the client's work is not the hub's.
    jkts = [jwk_thumbprint(SigningKey.generate().verify_key) for _ in range(args.clients)]
    acked: dict[str, int] = {}

    def channel_of(n: int, i: int) -> str:
        return channels[(n + i) % len(channels)]

    def request(n: int, i: int) -> bytes:
        if route == DEBITS:
            line, body = f"POST /v1/channels/{channel_of(n, i)}/debits", debit
        else:
            line = "POST /v1/purchases"
            body = json.dumps({"listing_id": listings[(n + i) % len(listings)], "channel_id": channel_of(n, i),
                               "buyer_jkt": jkts[n % len(jkts)]}).encode()
        return (f"{line} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nIdempotency-Key: c{n}-{i}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    def acknowledged(n: int, i: int) -> None:
        acked[channel_of(n, i)] = acked.get(channel_of(n, i), 0) + 1

    result = asyncio.run(closed_loop(port, args.clients, args.seconds, request, 201, acknowledged))
    result["acked"] = acked
    return result


def purchases_recorded(settings: Any) -> int:
    """``Purchased`` events in the bench schema's log."""
    import psycopg

    with psycopg.connect(settings.pg_conninfo(), autocommit=True,
                         options=f"-c search_path={settings.db_schema}") as conn:
        table = conn.execute(  # the event table: the one with notification ids (snapshots have topics too)
            "SELECT table_name FROM information_schema.columns WHERE table_schema = %s"
            " AND column_name = 'notification_id'", (settings.db_schema,)).fetchone()[0]
        return conn.execute(f'SELECT count(*) FROM "{table}" WHERE topic LIKE %s',
                            ("%:Purchase.Purchased",)).fetchone()[0]


def run(route: str, args: argparse.Namespace, stub: StripeStub, port: int) -> dict[str, Any]:
    env = server_env(service_env(args, redis=True), fresh_schema("bench_purchases"), port, stub.url, args.batch_ms,
                     args, projections_in_web=False)
    settings = postgres_settings(env)
    record: dict[str, Any] = {"route": route, "AIMARKET_DEBIT_BATCH_MS": args.batch_ms, "workers": args.workers,
                              "redis_routing": bool(settings.redis_url), "loadavg_before": loadavg()}
    with bench_schema(settings):
        hub = start(SERVE, env, f"bench-purchases-{port}")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{base}/healthz", hub)
            token, _, channels = setup(base, stub, args.channels, 10**9)
            seller, listings = seller_with_listings(base, args.listings)
            result = load(route, port, token, seller, channels, listings, args)
            acked = result.pop("acked")
            record.update(result)
            record["mismatched_channels"] = mismatched_channels(base, token, channels, acked)
            if route == PURCHASES:
                recorded = purchases_recorded(settings)
                record["purchases_recorded"] = recorded
                record["purchases_acknowledged"] = sum(acked.values())
        finally:
            stop(hub)
    record["loadavg_after"] = loadavg()
    return record


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(route: str, key: str) -> float | None:
        return median([r[key] for r in runs if r["route"] == route and r.get(key) is not None])

    per_route = {route: {"median_ok_per_s": med(route, "ok_per_s"), "median_p50_ms": med(route, "p50_ms"),
                         "median_p99_ms": med(route, "p99_ms"), "runs": sum(1 for r in runs if r["route"] == route)}
                 for route in (DEBITS, PURCHASES)}
    by = {(r["round"], r["route"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs})
    share = ratio(per_route[PURCHASES]["median_ok_per_s"], per_route[DEBITS]["median_ok_per_s"])
    bought = per_route[PURCHASES]
    met = ((bought["median_ok_per_s"] or 0) >= TARGET_PER_S and (bought["median_p99_ms"] or 1e9) <= TARGET_P99_MS
           and (share or 0) >= TARGET_SHARE)
    return {"summary": per_route, "purchases_vs_debits": share,
            "per_round_ratios": [ratio(by[(n, PURCHASES)]["ok_per_s"], by[(n, DEBITS)]["ok_per_s"]) for n in rounds
                                 if (n, PURCHASES) in by and (n, DEBITS) in by],
            "target": f">= {TARGET_PER_S} purchases/s (201), p99 <= {TARGET_P99_MS} ms, >= {TARGET_SHARE:.0%} of "
                      "the debit figure", "met": met}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--clients", type=int, default=64, help="concurrent keep-alive connections")
    parser.add_argument("--seconds", type=float, default=10, help="timed load per run (after 1 s of warm-up)")
    parser.add_argument("--channels", type=int, default=64, help="card channels the requests spread over")
    parser.add_argument("--listings", type=int, default=4, help="listings the purchases spread over")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the two runs; medians are reported")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (AIMARKET_WEB_WORKERS)")
    parser.add_argument("--threads", type=int, default=32, help="AIMARKET_WEB_THREADS")
    parser.add_argument("--port", type=int, default=18531, help="first loopback port (one per run)")
    parser.add_argument("--batch-ms", type=float, default=2.0, help="group-commit window (AIMARKET_DEBIT_BATCH_MS)")
    args = parser.parse_args()
    postgres_settings(service_env(args, redis=True))  # fail early on missing settings
    quiet = wait_for_quiet(args.quiet_load, args.quiet_wait_s)
    emit({"bench": "purchases", "cpus": os.cpu_count(), **quiet, "clients": args.clients, "seconds": args.seconds,
          "channels": args.channels, "listings": args.listings, "rounds": args.rounds})
    runs = []
    port = args.port
    with StripeStub() as stub:
        for n in range(1, args.rounds + 1):
            for route in (DEBITS, PURCHASES) if n % 2 else (PURCHASES, DEBITS):
                record = {"round": n, **run(route, args, stub, port)}
                emit(record)
                runs.append(record)
                port += 1
    emit(summary(runs))
    if any(r["mismatched_channels"] or r.get("purchases_recorded", 0) != r.get("purchases_acknowledged", 0)
           for r in runs):
        raise SystemExit("overdraft, lost or duplicated purchase detected")


if __name__ == "__main__":
    main()
