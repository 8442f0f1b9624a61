"""Issue 11, first Done-when point, with real processes on loopback: the hub (`aimarket serve`,
two gunicorn workers on a fresh PostgreSQL schema, Redis, the Stripe stub), a seller node
(`aim-node init/enroll/profile/publish --file`, then `aim-node serve`) and a buyer node
(`aim-node init/enroll`, then `aim-node buy --out`). The object arrives with the listing's
hash, the hub records the confirmation and the receipt and marks the purchase delivered, and
the channel paid the price once with the 5 % fee.

Then the promise "the payload flows only node to node": a 32-byte random marker sits, raw and
as hex text, in many blocks of the payload. Every client (both nodes and this test) talks to
the hub through a recording TCP proxy, so every byte of every hub request and response is
captured; neither the marker nor any half of it, in any encoding `sale_world.Marker` lists,
appears there, in the hub's log lines, in any row of its PostgreSQL schema, in its Redis
database (the keys at the end, and every command it sent while the test ran), in its data
directory, or in what it sent the Stripe stub. The same check finds it in the seller's file
and the buyer's copy."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis
import requests

from tests.conftest import pg_conninfo
from tests.e2e.sale_world import (
    Marker,
    RecordingProxy,
    RedisMonitor,
    blocks_holding,
    env_without_proxies,
    files_under,
    free_redis_db,
    http_messages,
    pg_dump,
    redis_dump,
)
from tests.e2e.test_newcomer_flow import free_port
from tests.helpers import wait_until
from tests.stubs import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET, payment_intent_succeeded_event, sign_webhook

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "a long node passphrase"
PASSWORD = "correct horse battery"
BLOCK_BYTES = 4096
PRICE_MINOR = 1999  # 5 % of it is 99.95: the fee rounds down to 99 on a fresh channel
FEE_BPS = 500
DEPOSIT_MINOR = 5000
# The test's own HTTP client: no proxy from the environment (only the recording one), and a new
# connection per call (no race with the hub closing an idle keep-alive connection).
WEB = requests.Session()
WEB.trust_env = False
WEB.headers["Connection"] = "close"


def node_env() -> dict[str, str]:
    return {**env_without_proxies(), "AIM_NODE_PASSPHRASE": PASSPHRASE, "AIM_NODE_KDF_PROFILE": "test",
            "PYTHONPATH": str(REPO)}


def aim_node(home: Path, *args: str, timeout_s: float = 60) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "node.cli", "--home", str(home), *args], env=node_env(),
                          capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    assert done.returncode == 0, f"aim-node {args[0]}: {done.stderr}"
    return json.loads(done.stdout) if done.stdout.lstrip().startswith("{") else {"stdout": done.stdout}


def write_payload(path: Path, marker: Marker, rows: int = 400) -> bytes:
    """A Parquet table whose every row holds the marker, raw (a binary column) and as hex text,
    stored uncompressed so both lie verbatim in many blocks of the file."""
    frame = pl.DataFrame({
        "row": list(range(rows)),
        "tag": [f"r{i}:{marker.hex.decode()}" for i in range(rows)],
        "blob": [str(i).encode() + b":" + marker.raw for i in range(rows)],
        "score": [i * 1.5 for i in range(rows)],
    })
    frame.write_parquet(path, compression="uncompressed", statistics=False)
    return path.read_bytes()


def sri(data: bytes) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode()


class Hub:
    """The hub as it runs in production: `aimarket serve` (two gunicorn workers) and `aimarket
    worker` (projections, Dramatiq jobs, cron) on one PostgreSQL schema and Redis database,
    behind the recording proxy; its discovery document names the proxy as the hub's URL, as
    behind a load balancer."""

    def __init__(self, tmp: Path, schema: str, redis_url: str, stripe_url: str, proxy: RecordingProxy,
                 port: int) -> None:
        self.url, self.data_dir = proxy.url, tmp / "hub-data"
        self.log_paths = {"serve": tmp / "hub-serve.log", "worker": tmp / "hub-worker.log"}
        self.env = {**env_without_proxies(), "AIMARKET_DATABASE_URL": os.environ.get(
                        "AIMARKET_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test"),
                    "AIMARKET_DB_SCHEMA": schema, "AIMARKET_SECRET": "cd" * 32, "AIMARKET_REDIS_URL": redis_url,
                    "AIMARKET_BCRYPT_ROUNDS": "4", "AIMARKET_BIND": f"127.0.0.1:{port}",
                    "AIMARKET_HUB_URL": proxy.url, "AIMARKET_STRIPE_API_KEY": DEFAULT_API_KEY,
                    "AIMARKET_STRIPE_WEBHOOK_SECRET": DEFAULT_WEBHOOK_SECRET, "AIMARKET_STRIPE_API_BASE": stripe_url,
                    "AIMARKET_DATA_DIR": str(self.data_dir), "AIMARKET_FEE_BPS": str(FEE_BPS)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for name, args in (("serve", ["serve", "--workers", "2"]), ("worker", ["worker", "--threads", "2"])):
            with self.log_paths[name].open("w") as log:  # a file, not a pipe: a full pipe would stall it
                self.procs[name] = subprocess.Popen([sys.executable, "-m", "ops.cli", *args], env=self.env,
                                                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                                    start_new_session=True)

        def up() -> bool:
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name}: {self.log_paths[name].read_text()[-5000:]}"
            try:
                return WEB.get(f"{self.url}/healthz", timeout=2).ok
            except requests.RequestException:
                return False

        wait_until(up, 60, what="the hub answering through the proxy", poll_s=0.2)

    def logs(self) -> bytes:
        return b"\n".join(path.read_bytes() for path in self.log_paths.values() if path.exists())

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: gunicorn's master and its workers
                proc.wait(10)
        self.procs = {}


def account(hub: Hub, roles: list[str]) -> dict[str, Any]:
    email = f"{roles[0]}-{uuid.uuid4().hex[:8]}@example.com"
    r = WEB.post(f"{hub.url}/v1/accounts", json={"email": email, "password": PASSWORD, "roles": roles},
                      timeout=10)
    assert r.status_code == 201, r.text
    session = WEB.post(f"{hub.url}/v1/sessions", json={"email": email, "password": PASSWORD}, timeout=10)
    assert session.status_code == 201, session.text
    headers = {"Authorization": f"Bearer {session.json()['access_token']}"}
    key = WEB.post(f"{hub.url}/v1/api-keys", json={"name": "node"}, headers=headers, timeout=10)
    assert key.status_code == 201, key.text
    return {"id": r.json()["id"], "headers": headers, "api_key": key.json()["secret"]}


def funded_card_channel(hub: Hub, stripe_stub: Any, buyer: dict[str, Any]) -> str:
    r = WEB.post(f"{hub.url}/v1/channels", json={"rail": "card", "currency": "USD",
                                                      "amount_minor": DEPOSIT_MINOR},
                      headers={**buyer["headers"], "Idempotency-Key": uuid.uuid4().hex}, timeout=10)
    assert r.status_code == 201, r.text
    body = payment_intent_succeeded_event(stripe_stub.succeed_payment_intent(r.json()["payment"]["payment_intent_id"]))
    w = WEB.post(f"{hub.url}/v1/webhooks/stripe", data=body, timeout=10, headers={
        "Stripe-Signature": sign_webhook(body, DEFAULT_WEBHOOK_SECRET), "Content-Type": "application/json"})
    assert w.status_code == 200 and w.json()["credited"] is True, w.text
    return str(r.json()["id"])


@pytest.fixture
def world(tmp_path: Path, pg_server, redis_server, stripe_stub) -> Iterator[dict[str, Any]]:
    """The hub behind the proxy, with a Redis database of its own under MONITOR; torn down
    (processes, proxy, tap, schema, database) whatever happens."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    redis_url = free_redis_db(redis_server)
    with ExitStack() as stack:
        stack.callback(lambda: _drop_schema(schema))
        stack.callback(lambda: redis.Redis.from_url(redis_url).flushdb())
        monitor = RedisMonitor(redis_url).start()
        stack.callback(monitor.stop)
        hub_port = free_port()
        proxy = RecordingProxy(hub_port).start()
        stack.callback(proxy.stop)
        hub = Hub(tmp_path, schema, redis_url, stripe_stub.url, proxy, hub_port)
        stack.callback(hub.stop)
        hub.start()
        nodes: list[subprocess.Popen[str]] = []
        stack.callback(lambda: [_end(p) for p in nodes])
        yield {"hub": hub, "proxy": proxy, "monitor": monitor, "schema": schema, "redis_url": redis_url,
               "nodes": nodes}


def _drop_schema(schema: str) -> None:
    from tests.conftest import drop_schema

    drop_schema(schema)


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def start_seller_node(world: dict[str, Any], home: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "--home", str(home), "serve", "--listen",
                             f"127.0.0.1:{port}", "--pump", "0.2", "--heartbeat", "1"],
                            stdout=subprocess.PIPE, stderr=(home / "serve.log").open("w"), env=node_env(), cwd=REPO,
                            text=True)
    world["nodes"].append(proc)
    line = proc.stdout.readline() if proc.stdout else ""
    assert line and "listening" in json.loads(line), (home / "serve.log").read_text()
    return proc


def sell(world: dict[str, Any], tmp: Path, seller: dict[str, Any], marker: Marker) -> dict[str, Any]:
    """The seller's node: keys, enrollment, the file profiled locally, its metadata published
    with the file's block commitment, then `aim-node serve`."""
    hub: Hub = world["hub"]
    home, port = tmp / "seller", free_port()
    aim_node(home, "init")
    aim_node(home, "enroll", "--hub", hub.url, "--api-key", seller["api_key"], "--name", "seller", "--endpoint",
             f"http://127.0.0.1:{port}")
    (tmp / "data").mkdir()
    path = tmp / "data" / "admissions.parquet"
    payload = write_payload(path, marker)
    assert len(blocks_holding(payload, marker.raw, BLOCK_BYTES)) >= 3
    assert len(blocks_holding(payload, marker.hex, BLOCK_BYTES)) >= 3
    report = tmp / "admissions.profile.json"
    aim_node(home, "profile", str(path), "--out", str(report))
    published = aim_node(home, "publish", str(report), "--file", str(path), "--block-size", str(BLOCK_BYTES),
                         "--price", str(PRICE_MINOR), "--currency", "USD", "--licence", "CC-BY-4.0",
                         "--category", "health")
    listing_url = f"{hub.url}/v1/listings/{published['id']}"
    wait_until(lambda: WEB.get(listing_url, timeout=10).ok, 30, what="the listing in the catalogue read model",
               poll_s=0.2)
    start_seller_node(world, home, port)
    return {"home": home, "path": path, "payload": payload, "listing": WEB.get(listing_url, timeout=10).json()}


def buy(world: dict[str, Any], tmp: Path, buyer: dict[str, Any], listing_id: str, channel_id: str) -> dict[str, Any]:
    """The buyer's node: keys, enrollment, then `aim-node buy --out` (it buys, then fetches
    straight from the seller's node and reports its confirmation)."""
    hub: Hub = world["hub"]
    home, out = tmp / "buyer", tmp / "bought" / "admissions.parquet"
    out.parent.mkdir()
    aim_node(home, "init")
    aim_node(home, "enroll", "--hub", hub.url, "--api-key", buyer["api_key"], "--name", "buyer", "--endpoint",
             f"http://127.0.0.1:{free_port()}")
    done = subprocess.run([sys.executable, "-m", "node.cli", "--home", str(home), "buy", listing_id, "--channel",
                           channel_id, "--hub", hub.url, "--api-key", buyer["api_key"], "--out", str(out),
                           "--no-progress"], env=node_env(), capture_output=True, text=True, timeout=90, cwd=REPO)
    assert done.returncode == 0, done.stderr
    bought, fetched = _two_json_documents(done.stdout)
    folder = home / "purchases" / bought["purchase_id"]
    return {"home": home, "out": out, "bought": bought, "fetched": fetched,
            "token": (folder / "token.jwt").read_text().strip(),
            "purchase": json.loads((folder / "purchase.json").read_text())}


def hub_side(world: dict[str, Any], stripe_stub: Any) -> dict[str, Any]:
    """Stop every process, then gather everything the hub saw, said, kept and sent."""
    for proc in world["nodes"]:
        _end(proc)
    world["proxy"].stop()
    hub: Hub = world["hub"]
    seen = _traffic(world["proxy"])
    redis_live = redis_dump(world["redis_url"])  # while the hub runs: its routing keys are there
    hub.stop()
    database, row_counts = pg_dump(pg_conninfo(), world["schema"])
    return {**seen, "redis_live": redis_live, "redis_keys": redis_live + redis_dump(world["redis_url"]),
            "redis_commands": world["monitor"].stop(), "log": hub.logs(), "files": files_under(hub.data_dir),
            "database": database, "row_counts": row_counts,
            "to_stripe": b"\n".join(r.raw_body + json.dumps(r.headers).encode() + r.path.encode()
                                    for r in stripe_stub.requests)}


def test_a_sale_end_to_end_and_the_payload_never_reaches_the_hub(world, stripe_stub, tmp_path: Path) -> None:
    hub: Hub = world["hub"]
    marker = Marker()
    seller, buyer = account(hub, ["seller"]), account(hub, ["buyer", "seller"])  # a node needs the seller role
    channel_id = funded_card_channel(hub, stripe_stub, buyer)
    # A canary: a second marker this test does send the hub (an API key's name, a request
    # path), so the checks below are shown to see a marker where one does reach the hub.
    canary = Marker()
    r = WEB.post(f"{hub.url}/v1/api-keys", json={"name": canary.hex.decode()}, headers=buyer["headers"], timeout=10)
    assert r.status_code == 201, r.text
    canary_path = base64.urlsafe_b64encode(canary.raw).decode().rstrip("=")
    assert WEB.get(f"{hub.url}/v1/listings/{canary_path}", timeout=10).status_code in (404, 422)

    sold = sell(world, tmp_path, seller, marker)
    listing = sold["listing"]
    got = buy(world, tmp_path, buyer, listing["id"], channel_id)
    purchase_id = got["bought"]["purchase_id"]
    assert (got["bought"]["price_minor"], got["bought"]["fee_minor"]) == (PRICE_MINOR, 99)
    assert got["fetched"]["outcome"] == "complete"

    # The object: the bytes the seller has, with the hash the signed listing committed to.
    data = got["out"].read_bytes()
    assert data == sold["payload"]
    assert sri(data) == listing["delivery"]["object_hash"] == got["purchase"]["object"]["content_hash"]
    assert listing["delivery"]["size_bytes"] == len(data)
    # The listing's dataset hash (docs/catalogue.md: over "name NUL sha256 LF" per file) is of it too.
    dataset_hash = hashlib.sha256(b"admissions.parquet\0" + hashlib.sha256(data).digest() + b"\n").digest()
    assert listing["content_hash"] == "sha256-" + base64.b64encode(dataset_hash).decode()

    # The hub records the receipt (seller's node) and the confirmation (both nodes' outboxes,
    # delivered at least once with back-off) and marks the purchase delivered.
    def purchase(who: dict[str, Any]) -> dict[str, Any]:
        return WEB.get(f"{hub.url}/v1/purchases/{purchase_id}", headers=who["headers"], timeout=10).json()

    wait_until(lambda: purchase(buyer)["status"] == "delivered", 45, what="the purchase marked delivered",
               poll_s=0.25)
    view, latest = purchase(buyer), purchase(buyer)["receipts"]["latest"]
    assert view["receipts"]["count"] >= 1 and view["confirmations"]["count"] >= 1, view
    assert latest["outcome"] == "complete" and latest["bytes_sent"] == len(data), latest
    assert view["delivered_at_ms"] is not None and view["token"]["redeemed_at_ms"] is not None
    assert (view["price_minor"], view["fee_minor"], view["seller_net_minor"]) == (1999, 99, 1900)
    assert purchase(seller)["status"] == "delivered"

    # The channel paid once: the price, and the fee by the cumulative rule
    # floor(spent_after * bps / 10^4) - floor(spent_before * bps / 10^4) on a fresh channel.
    channel = WEB.get(f"{hub.url}/v1/channels/{channel_id}", headers=buyer["headers"], timeout=10).json()
    assert (channel["spent_minor"], channel["debits"]) == (PRICE_MINOR, 1), channel
    assert channel["fee_minor"] == view["fee_minor"] == PRICE_MINOR * FEE_BPS // 10_000 - 0 * FEE_BPS // 10_000
    assert channel["remaining_minor"] == DEPOSIT_MINOR - PRICE_MINOR

    # Now the marker. Everything stops first, so what is read is complete.
    seen = hub_side(world, stripe_stub)
    check_the_checks(seen, marker, canary, sold, got, purchase_id)
    leaks = {where: marker.found_in(seen[key]) for where, key in (
        ("hub requests (raw bytes)", "requests"), ("hub responses (raw bytes)", "responses"),
        ("hub requests (decoded bodies)", "request_bodies"), ("hub responses (decoded bodies)", "response_bodies"),
        ("hub log lines", "log"), ("PostgreSQL schema", "database"), ("Redis keys and values", "redis_keys"),
        ("Redis commands (MONITOR)", "redis_commands"), ("hub data directory", "files"),
        ("hub requests to Stripe", "to_stripe"))}
    found = {where: names for where, names in leaks.items() if names}
    assert not found, "the marker reached the hub: " + "; ".join(f"{w}: {', '.join(n)}" for w, n in found.items())
    assert "Traceback" not in (sold["home"] / "serve.log").read_text()


def check_the_checks(seen: dict[str, Any], marker: Marker, canary: Marker, sold: dict[str, Any],
                     got: dict[str, Any], purchase_id: str) -> None:
    """What the leak check reads is real, and the check sees a marker where there is one."""
    # It finds the marker in the seller's file, the buyer's copy, and a base64-encoded block
    # that holds it, at each alignment.
    payload = sold["payload"]
    copies = {"the seller's file": sold["path"].read_bytes(), "the buyer's copy": got["out"].read_bytes()}
    for where, data in copies.items():
        assert {"raw first half", "hex second half"} <= set(marker.found_in(data)), where
    block = payload[min(blocks_holding(payload, marker.hex, BLOCK_BYTES)) * BLOCK_BYTES:][:BLOCK_BYTES]
    for skip in range(3):
        assert marker.found_in(base64.b64encode(block[skip:])), skip
        assert marker.found_in(base64.urlsafe_b64encode(block[skip:])), skip
    # It finds the canary where the test sent it.
    assert {"hex first half", "raw first half as base64url at offset 0"} <= set(canary.found_in(seen["requests"]))
    assert "raw first half as base64url at offset 0" in canary.found_in(seen["log"])
    assert "hex first half" in canary.found_in(seen["database"])
    # The traffic holds the sale, the database its events, Redis the hub's debit routing, the
    # log one line per request.
    for needle in (b"POST /v1/purchases", b"POST /v1/traces", b"TraceEnvelope", b"DeliveryReceipt",
                   b"DeliveryConfirmation", sold["listing"]["delivery"]["object_hash"].encode()):
        assert needle in seen["requests"], needle
    assert got["token"].encode() in seen["responses"] and purchase_id.encode() in seen["responses"]
    assert purchase_id.encode() in seen["database"] and b"DeliveryReceipt" in seen["database"], seen["row_counts"]
    counts = seen["row_counts"]  # the event log and the read models (search, purchases, ledger, audit tree)
    assert counts["aimarket_events"] >= 20 and counts["purchases"] == counts["search_listings"] == 1, counts
    assert b"debit-members" in seen["redis_commands"] and b"debit-members" in seen["redis_live"]
    assert purchase_id.encode() in seen["log"] and len(seen["to_stripe"]) > 0
    # Every request the hub logged came through the proxy: no client reached the hub around it.
    logged = [line for line in seen["log"].splitlines() if line.startswith(b"{") and b'"event":"request"' in line]
    assert seen["requests_count"] == len(logged) >= 20, (seen["requests_count"], len(logged))


def _two_json_documents(stdout: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`aim-node buy --out` prints the purchase, then the fetch's result."""
    decoder = json.JSONDecoder()
    first, end = decoder.raw_decode(stdout.lstrip())
    second, _ = decoder.raw_decode(stdout.lstrip()[end:].lstrip())
    return first, second


def _traffic(proxy: RecordingProxy) -> dict[str, Any]:
    requests_raw, responses_raw, request_bodies, response_bodies, count = [], [], [], [], 0
    for capture in proxy.captures:
        requests_raw.append(bytes(capture.request))
        responses_raw.append(bytes(capture.response))
        for _, body in http_messages(bytes(capture.request), responses=False):
            request_bodies.append(body)
            count += 1
        response_bodies += [body for _, body in http_messages(bytes(capture.response), responses=True)]
    return {"requests": b"\n".join(requests_raw), "responses": b"\n".join(responses_raw),
            "request_bodies": b"\n".join(request_bodies), "response_bodies": b"\n".join(response_bodies),
            "requests_count": count}
