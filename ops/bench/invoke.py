"""Invocations per second at one seller node: metered (receipts, countersignatures, the durable
session store) against the same callable served bare by the same server, in the same run.

    python -m ops.bench.invoke [--calls 4000] [--in-flight 32] [--rounds 3] [--workers 2] [--quiet-load 1.5]

One ``aim-node compute serve`` process (real, on loopback) serves the example ``echo`` pipeline
under two listings: one metered, one registered with ``--bare-listing`` (no metering, receipts,
countersignatures, storage or safety checks: the handshake, the encrypted frames and the worker
processes stay). Each round opens one session per listing with a locally signed invoke token and
runs ``--calls`` calls with ``--in-flight`` of them pipelined on the connection, the two orders
alternating over rounds; the medians are reported. The buyer verifies every receipt and
countersigns when the cap rule needs it (``countersign="lazy"``). Nothing talks to a hub during a
session: the hub's share is the token it issued before and the two outbox entries after
(``invoke_bound``, ``invoke_final``), counted from the node's compute outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from domain.model.delivery import jwk_thumbprint
from domain.model.invoke import issue_invoke_token
from domain.model.keys import KxPrivateKey, SigningKey
from node import keystore as ks
from node.compute.client import open_session_async
from node.compute.registry import Registry
from node.outbox import Outbox
from ops.bench.common import add_common_args, loadavg, median, quantiles_ms, ratio, wait_for_quiet

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "node" / "compute" / "examples" / "echo.json"
METERED, BARE = "00000000-0000-5000-8000-0000000be4c1", "00000000-0000-5000-8000-0000000be4c2"
DEVICE_ID = "6e3d2c1b-0a9f-5e8d-9c7b-2a3b4c5d6e7f"
PASSPHRASE = "benchmark passphrase, not a secret"


class Seller:
    """A node home with the echo pipeline registered twice, and its ``compute serve`` process."""

    def __init__(self, root: Path, workers: int) -> None:
        self.hub, self.device, self.kx, self.buyer = (SigningKey.generate(), SigningKey.generate(),
                                                      KxPrivateKey.generate(), SigningKey.generate())
        self.home = root / "node"
        ks.create(self.home / "keystore.json", PASSPHRASE, device_id=DEVICE_ID, hub_url="http://hub.bench",
                  signing_key=self.device, kx_key=self.kx, ops_limit=ks.TEST_OPS_LIMIT, mem_limit=ks.TEST_MEM_LIMIT)
        registry = Registry(self.home / "compute.sqlite")
        for listing in (METERED, BARE):
            registry.register(listing, ECHO, int(time.time() * 1000))
        registry.close()
        hub_key = f"{self.hub.key_id}={self.hub.verify_key.to_multibase()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "--home", str(self.home), "compute", "serve", "--listen", "127.0.0.1:0",
             "--hub-key", hub_key, "--workers", str(workers), "--bare-listing", BARE, "--rate", "1e9",
             "--rate-burst", "1000000000", "--max-concurrency", "64", "--max-queue", "4096"],
            stdout=subprocess.PIPE, env={**os.environ, "AIM_NODE_PASSPHRASE": PASSPHRASE}, cwd=REPO, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise SystemExit("the node did not start")
        self.address = json.loads(line)["listening"]

    def token(self, listing: str, calls: int) -> str:
        now = int(time.time())
        return issue_invoke_token({
            "iss": "http://hub.bench", "aud": DEVICE_ID, "sub": f"bench-{uuid.uuid4().hex[:12]}",
            "jti": f"bench-{uuid.uuid4().hex}", "iat": now, "start_by": now + 300, "exp": now + 3600,
            "listing_id": listing, "listing_version": 1, "unit": "calls", "unit_price_minor": 1, "currency": "USDC",
            "budget_minor": calls + 1, "max_call_units": 1, "max_concurrency": 64,
            "cnf": {"jkt": jwk_thumbprint(self.buyer.verify_key)},
            "seller_keys": {"ed25519": self.device.verify_key.to_multibase(), "x25519": self.kx.public_key.to_multibase()},
        }, self.hub, self.hub.key_id)

    def outbox_entries(self) -> list[str]:
        outbox = Outbox(self.home / "outbox.sqlite")
        try:
            return [entry.kind for entry in outbox.entries()]
        finally:
            outbox.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of the node process itself, and of its live worker processes."""
    workers = 0.0
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for cpid in child.read_text().split():
            workers += cpu_s(int(cpid))
    return cpu_s(pid), workers


async def run_session(seller: Seller, listing: str, calls: int, in_flight: int) -> dict[str, Any]:
    session = await open_session_async(seller.token(listing, calls), seller.buyer,
                                       {seller.hub.key_id: seller.hub.verify_key}, seller=seller.address)
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = []
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with gate:
            began = time.perf_counter()
            try:
                await session.invoke({"i": i})
            except Exception:  # any refusal is counted, never retried
                failures += 1
                return
            latencies.append(time.perf_counter() - began)

    node_before, workers_before = tree_cpu_s(seller.proc.pid)
    buyer_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    elapsed = time.perf_counter() - started
    node_after, workers_after = tree_cpu_s(seller.proc.pid)
    cpu_us = {"node_cpu_us_per_call": round((node_after - node_before) / calls * 1e6),
              "workers_cpu_us_per_call": round((workers_after - workers_before) / calls * 1e6),
              "buyer_cpu_us_per_call": round((time.process_time() - buyer_before) / calls * 1e6)}
    final = await session.close()
    billed = final["credentialSubject"]["cumulative_units"] if final else None
    return {"per_s": round(len(latencies) / elapsed), "ok": len(latencies), "failed": failures,
            "billed_units": billed, **cpu_us, **quantiles_ms(latencies)}


async def measure(seller: Seller, args: argparse.Namespace) -> list[dict[str, Any]]:
    await run_session(seller, METERED, min(500, args.calls), args.in_flight)  # warm both paths up
    await run_session(seller, BARE, min(500, args.calls), args.in_flight)
    rounds = []
    for number in range(args.rounds):
        order = (BARE, METERED) if number % 2 == 0 else (METERED, BARE)
        results = {listing: await run_session(seller, listing, args.calls, args.in_flight) for listing in order}
        rounds.append({"round": number + 1, "load": loadavg(), "bare": results[BARE], "metered": results[METERED]})
        print(json.dumps(rounds[-1]), flush=True)
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4000, help="calls per session and round")
    parser.add_argument("--in-flight", type=int, default=32, help="calls pipelined on the connection")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="the node's worker processes")
    add_common_args(parser, services=False)
    args = parser.parse_args(argv)
    quiet = wait_for_quiet(args.quiet_load, args.quiet_wait_s)
    with tempfile.TemporaryDirectory(prefix="aimarket-invoke-bench-") as root:
        seller = Seller(Path(root), args.workers)
        try:
            rounds = asyncio.run(measure(seller, args))
            entries = seller.outbox_entries()
        finally:
            seller.stop()
    metered = median([r["metered"]["per_s"] for r in rounds])
    bare = median([r["bare"]["per_s"] for r in rounds])
    sessions = 2 * (args.rounds + 1)
    summary = {"bench": "invoke", "calls": args.calls, "in_flight": args.in_flight, "workers": args.workers,
               "metered_per_s": metered, "bare_per_s": bare, "metered_over_bare": ratio(metered, bare),
               "metered_p99_ms": median([r["metered"]["p99_ms"] for r in rounds]),
               "bare_p99_ms": median([r["bare"]["p99_ms"] for r in rounds]),
               "hub_requests_during_a_session": 0,
               "outbox_entries_per_metered_session": round(len(entries) / (sessions / 2), 2),
               "outbox_kinds": sorted(set(entries)), **quiet, "load_at_end": loadavg()}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
