"""``GET /metrics``: request latency histograms per route, counters of the business facts from
the log, the outbox depth nodes report, projection lag; under gunicorn one scrape sums every
worker's histograms (prometheus_client multiprocess mode, real processes on loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import auth, device_jwt
from tests.traces.helpers import enrolled_node

ROOT = Path(__file__).parents[2]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_the_facts_the_latency_and_the_nodes_backlog(shop, monkeypatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    seller = shop.seller()
    buyer = shop.buyer()
    assert shop.buy(buyer, shop.listing(seller)).status_code == 201
    node, _ = enrolled_node(shop.client)
    beat = node.append("heartbeat", {"started_ms": 0, "uptime_s": 60, "outbox_pending": 3})
    r = shop.client.simulate_post("/v1/traces", json={"envelopes": [node.envelope(beat)]},
                                  headers=auth(device_jwt(node.key, node.device_id, int(time.time()))))
    assert r.status_code == 200, r.json
    shop.catch_up()
    r = shop.client.simulate_get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    found = samples(r.text)
    assert value(found, "aimarket_store_up") == 1
    assert (value(found, "aimarket_purchases_total"), value(found, "aimarket_debits_total")) == (1, 1)
    for name in ("deliveries", "invocations", "settlements", "payouts"):
        assert value(found, f"aimarket_{name}_total") == 0
    assert value(found, "aimarket_events_total", type="Purchase.Purchased") == 1
    assert value(found, "aimarket_events_total", type="Channel.Debited") == 1
    assert value(found, "aimarket_node_outbox_pending_entries") == 3
    assert value(found, "aimarket_node_outbox_pending_entries_max") == 3
    assert value(found, "aimarket_nodes_reporting") == 1
    assert value(found, "aimarket_projection_lag_positions", projection="audit_log") == 0
    buys = value(found, "aimarket_http_request_duration_seconds_count", route="/v1/purchases", method="POST",
                 status_class="2xx")
    assert buys >= 1
    assert value(found, "aimarket_http_request_duration_seconds_bucket", route="/v1/purchases", method="POST",
                 status_class="2xx", le="+Inf") == buys
    # the next scrape counts only what is new, and a refused request has its status class
    assert shop.buy(buyer, shop.listing(seller)).status_code == 201
    shop.client.simulate_get("/v1/me")
    shop.catch_up()
    again = samples(shop.client.simulate_get("/metrics").text)
    assert value(again, "aimarket_purchases_total") == 2
    assert value(again, "aimarket_http_request_duration_seconds_count", route="/v1/me", method="GET",
                 status_class="4xx") >= 1
    assert value(again, "aimarket_http_request_duration_seconds_count", route="/v1/purchases", method="POST",
                 status_class="2xx") == buys + 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


@pytest.fixture
def two_workers(tmp_path: Path):
    port, prom = _free_port(), tmp_path / "prometheus"
    prom.mkdir()
    (prom / "counter_1.db").write_bytes(b"stale")  # a previous run's file: emptied at start
    env = {**os.environ, "AIMARKET_DATA_DIR": str(tmp_path / "hub"), "AIMARKET_BCRYPT_ROUNDS": "4",
           "AIMARKET_BIND": f"127.0.0.1:{port}", "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    env.pop("AIMARKET_DATABASE_URL", None)
    log_path = tmp_path / "hub.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "serve", "--workers", "2"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _get(url + "/readyz")
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise AssertionError(log_path.read_text()[-5000:]) from None
                    time.sleep(0.2)
            yield url, prom
        finally:
            proc.terminate()
            proc.wait(15)
            print(log_path.read_text()[-3000:])


def test_one_scrape_sums_both_workers(two_workers) -> None:
    url, prom = two_workers
    assert not (prom / "counter_1.db").exists()
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        while sent < 4000:
            list(pool.map(lambda _: _get(url + "/healthz"), range(40)))  # a new connection each
            sent += 40
            if len(list(prom.glob("histogram_*.db"))) >= 2:
                break
    pids = {p.stem.split("_")[1] for p in prom.glob("histogram_*.db")}
    assert len(pids) == 2, f"one worker served all {sent} requests"
    found = samples(_get(url + "/metrics").decode())
    assert value(found, "aimarket_http_request_duration_seconds_count", route="/healthz", method="GET",
                 status_class="2xx") == sent
    assert value(found, "aimarket_store_up") == 1
