"""The production shape with real processes: `aimarket serve` on PostgreSQL (two Uvicorn
workers under gunicorn) with Redis debit routing. Login runs bcrypt off the event loop, a card channel
is funded through the signed webhook, and debits sent to both workers (each retried on the
other one) all land exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import PG_URL, drop_schema
from tests.e2e.test_newcomer_flow import free_port
from tests.stubs import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET, payment_intent_succeeded_event, sign_webhook

ROOT = Path(__file__).parents[2]


@pytest.fixture
def pg_hub(tmp_path: Path, pg_server, redis_server, stripe_stub):
    port = free_port()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "AIMARKET_DATABASE_URL": PG_URL, "AIMARKET_DB_SCHEMA": schema, "AIMARKET_SECRET": "cd" * 32,
           "AIMARKET_REDIS_URL": redis_server, "AIMARKET_BCRYPT_ROUNDS": "4", "AIMARKET_BIND": f"127.0.0.1:{port}",
           "AIMARKET_HUB_URL": f"http://127.0.0.1:{port}", "AIMARKET_STRIPE_API_KEY": DEFAULT_API_KEY,
           "AIMARKET_STRIPE_WEBHOOK_SECRET": DEFAULT_WEBHOOK_SECRET, "AIMARKET_STRIPE_API_BASE": stripe_stub.url,
           "AIMARKET_DATA_DIR": str(tmp_path / "hub")}
    log = (tmp_path / "hub.log").open("w")  # a file, not a pipe: one log line per request would fill a pipe
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "serve", "--workers", "2"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError((tmp_path / "hub.log").read_text()[-5000:])
            time.sleep(0.2)
        yield url, proc, tmp_path / "hub.log"
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        drop_schema(schema)


def test_uvicorn_workers_on_postgres_take_debits_exactly_once(pg_hub, stripe_stub) -> None:
    url, proc, log_path = pg_hub
    s = requests.Session()
    tokens = {}
    ids = {}
    for role in ("buyer", "seller"):
        email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
        r = s.post(f"{url}/v1/accounts", json={"email": email, "password": "correct horse battery", "roles": [role]})
        assert r.status_code == 201, r.text
        ids[role] = r.json()["id"]
        r = s.post(f"{url}/v1/sessions", json={"email": email, "password": "correct horse battery"})
        assert r.status_code == 201, r.text
        tokens[role] = r.json()["access_token"]
    headers = {"Authorization": f"Bearer {tokens['buyer']}"}
    channels = []
    for _ in range(4):
        r = s.post(f"{url}/v1/channels", json={"rail": "card", "currency": "USD", "amount_minor": 10_000},
                   headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 201, r.text
        body = payment_intent_succeeded_event(stripe_stub.succeed_payment_intent(r.json()["payment"]["payment_intent_id"]))
        w = s.post(f"{url}/v1/webhooks/stripe", data=body, headers={
            "Stripe-Signature": sign_webhook(body, DEFAULT_WEBHOOK_SECRET), "Content-Type": "application/json"})
        assert w.json()["credited"] is True, w.text
        channels.append(r.json()["id"])

    # One keep-alive connection pinned to each worker (the response's request-id prefix names
    # the process): which worker accepts a new connection is the kernel's choice, and the
    # second worker may still be starting.
    pinned: dict[str, requests.Session] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.02)
        session = requests.Session()
        worker = session.get(f"{url}/healthz").headers["X-Request-Id"].rsplit("-", 1)[0]
        if worker in pinned:
            session.close()
        else:
            pinned[worker] = session
        if len(pinned) == 2:
            break
    assert len(pinned) == 2, "every connection went to the same worker"
    first, second = pinned.values()
    locks = {id(first): threading.Lock(), id(second): threading.Lock()}

    def post(session: requests.Session, channel: str, key: str) -> requests.Response:
        with locks[id(session)]:
            return session.post(f"{url}/v1/channels/{channel}/debits",
                                json={"amount_minor": 7, "seller_account_id": ids["seller"]},
                                headers={**headers, "Idempotency-Key": key})

    def debit(n: int) -> tuple[str, int]:
        channel = channels[n % len(channels)]
        here, there = (first, second) if n % 2 else (second, first)
        r = post(here, channel, f"k{n}")
        again = post(there, channel, f"k{n}")  # the retry lands on the other worker
        assert r.status_code == 201 and again.status_code == 201, (r.text, again.text)
        assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == r.json()
        return channel, 7

    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(debit, range(160)))
    for channel in channels:
        view = s.get(f"{url}/v1/channels/{channel}", headers=headers).json()
        assert view["spent_minor"] == sum(a for c, a in done if c == channel) == 280
    assert proc.poll() is None
    # Both workers took debits, so both joined the routing members (and forwarded to each other).
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "debit_routing.members" and line["members"] == 2 for line in lines)
