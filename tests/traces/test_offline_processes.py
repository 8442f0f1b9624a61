"""Done when: "a node that cannot reach the hub keeps its traces in the outbox and delivers them,
each recorded once, when the hub returns". Real processes on loopback: ``aimarket serve`` on
PostgreSQL (stopped, then started again on the same port and schema), ``aim-node serve`` (the
seller's node: heartbeats, a redemption, the buyer's confirmation, a receipt) and the buyer's
``aim-node fetch`` / ``aim-node outbox deliver`` with its own outbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from domain.model.delivery import issue_delivery_token, jwk_thumbprint
from domain.model.device import enrollment_message
from domain.model.keys import KxPrivateKey, SigningKey, b64url
from node import keystore as ks
from node.delivery.keys import save_buyer_key
from node.outbox import Outbox
from node.publishing import register_object
from ops.bootstrap import build_runtime
from tests.conftest import PG_URL
from tests.e2e.test_newcomer_flow import free_port
from tests.helpers import wait_until
from tests.traces.helpers import RECORDED, events

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "correct horse battery staple"
LISTING_ID = "0b7e6f0e-1d2c-5b3a-9f8e-7d6c5b4a3f2e"
BLOCK = 64 * 1024


class HubProcess:
    """``aimarket serve`` (one worker) on a fixed port and schema, stopped and started at will."""

    def __init__(self, tmp: Path, schema: str, redis_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "hub.log"
        self.env = {**os.environ, "AIMARKET_DATABASE_URL": PG_URL, "AIMARKET_DB_SCHEMA": schema,
                    "AIMARKET_SECRET": "cd" * 32, "AIMARKET_REDIS_URL": redis_url, "AIMARKET_BCRYPT_ROUNDS": "4",
                    "AIMARKET_BIND": f"127.0.0.1:{self.port}", "AIMARKET_HUB_URL": self.url,
                    "AIMARKET_DATA_DIR": str(tmp / "hub")}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("a")  # a file, not a pipe: one log line per request would fill a pipe
        self.proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "serve", "--workers", "1"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(self.log_path.read_text()[-5000:])
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def reachable(self) -> bool:
        try:
            requests.get(f"{self.url}/healthz", timeout=1)
            return True
        except requests.RequestException:
            return False


def node_env() -> dict[str, str]:
    return {**os.environ, "AIM_NODE_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(REPO)}


def enroll_home(hub: HubProcess, home: Path, api_key: str, account_id: str) -> tuple[str, SigningKey, KxPrivateKey]:
    """A node home with a keystore enrolled at ``hub`` (over HTTP, as ``aim-node enroll`` does)."""
    key, kx = SigningKey.generate(), KxPrivateKey.generate()
    bearer = {"Authorization": f"Bearer {api_key}"}
    challenge = requests.post(f"{hub.url}/v1/devices/challenges", json={}, headers=bearer, timeout=10).json()
    fields = {"challenge": challenge["challenge"], "name": home.name, "endpoint": "http://127.0.0.1:9090",
              "public_key": key.verify_key.to_multibase(), "kx_public_key": kx.public_key.to_multibase()}
    signature = b64url(key.sign(enrollment_message(account_id=account_id, **fields)))
    r = requests.post(f"{hub.url}/v1/devices", json={**fields, "signature": signature}, headers=bearer, timeout=10)
    assert r.status_code == 201, r.text
    ks.create(home / "keystore.json", PASSPHRASE, device_id=r.json()["id"], hub_url=hub.url, signing_key=key,
              kx_key=kx, ops_limit=ks.TEST_OPS_LIMIT, mem_limit=ks.TEST_MEM_LIMIT)
    return r.json()["id"], key, kx


def seller_account(hub: HubProcess) -> tuple[str, str]:
    email = f"node-{uuid.uuid4().hex[:8]}@example.com"
    r = requests.post(f"{hub.url}/v1/accounts", json={"email": email, "password": PASSPHRASE,
                                                      "roles": ["seller", "buyer"]}, timeout=10)
    assert r.status_code == 201, r.text
    session = requests.post(f"{hub.url}/v1/sessions", json={"email": email, "password": PASSPHRASE},
                            timeout=10).json()["access_token"]
    key = requests.post(f"{hub.url}/v1/api-keys", json={"name": "node"},
                        headers={"Authorization": f"Bearer {session}"}, timeout=10).json()["secret"]
    return r.json()["id"], key


def outbox_status(home: Path) -> dict[str, Any]:
    box = Outbox(home / "outbox.sqlite")
    try:
        return {**box.status(), "kinds": [e.kind for e in box.entries()],
                "entries": [(e.seq, e.entry_hash) for e in box.entries()]}
    finally:
        box.close()


def delivered(home: Path) -> list[tuple[int, str]]:
    box = Outbox(home / "outbox.sqlite")
    try:
        rows = box._db.execute("SELECT seq, entry_hash FROM entries WHERE delivered_ms IS NOT NULL ORDER BY seq")
        return [(seq, digest) for seq, digest in rows]
    finally:
        box.close()


def test_a_node_keeps_its_traces_while_the_hub_is_away_and_each_is_recorded_once(
        tmp_path: Path, make_settings, redis_server) -> None:
    settings = make_settings("postgres")  # its schema is the hub's, dropped at the end
    hub = HubProcess(tmp_path, settings.db_schema, redis_server)
    seller_home, buyer_home = tmp_path / "seller", tmp_path / "buyer"
    node: subprocess.Popen[str] | None = None
    try:
        hub.start()
        account_id, api_key = seller_account(hub)
        device_id, device_key, device_kx = enroll_home(hub, seller_home, api_key, account_id)
        buyer_device, _, _ = enroll_home(hub, buyer_home, api_key, account_id)
        payload = os.urandom(3 * BLOCK - 100)
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "object.bin").write_bytes(payload)
        delivery = register_object(seller_home, LISTING_ID, tmp_path / "data" / "object.bin", block_size=BLOCK)
        hub.stop()
        assert not hub.reachable()

        token_key, buyer_key = SigningKey.generate(), SigningKey.generate()
        now = int(time.time())
        token = issue_delivery_token({
            "iss": hub.url, "aud": device_id, "sub": str(uuid.uuid4()), "jti": "offline-token-00000001", "iat": now,
            "start_by": now + 300, "exp": now + 3600, "listing_id": LISTING_ID, "listing_version": 1,
            "content_hash": delivery["object_hash"], "size_bytes": delivery["size_bytes"],
            "byte_limit": 2 * delivery["size_bytes"], "blocks": delivery["blocks"],
            "cnf": {"jkt": jwk_thumbprint(buyer_key.verify_key)},
            "seller_keys": {"ed25519": device_key.verify_key.to_multibase(),
                            "x25519": device_kx.public_key.to_multibase()}}, token_key, token_key.key_id)
        hub_key = f"{token_key.key_id}={token_key.verify_key.to_multibase()}"
        node = subprocess.Popen([sys.executable, "-m", "node.cli", "--home", str(seller_home), "serve", "--listen",
                                 "127.0.0.1:0", "--hub-key", hub_key, "--heartbeat", "0.5", "--pump", "0.2"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=node_env(), cwd=REPO,
                                text=True)
        address = json.loads(node.stdout.readline())["listening"]

        (tmp_path / "token.jwt").write_text(token)
        save_buyer_key(buyer_key, tmp_path / "buyer.jwk")
        fetched = subprocess.run(
            [sys.executable, "-m", "node.cli", "--home", str(buyer_home), "fetch", "--token",
             str(tmp_path / "token.jwt"), "--key", str(tmp_path / "buyer.jwk"), "--out", str(tmp_path / "got.bin"),
             "--seller", address, "--hub-key", hub_key, "--no-progress"],
            capture_output=True, text=True, env=node_env(), cwd=REPO, timeout=120)
        assert fetched.returncode == 0, fetched.stderr
        assert (tmp_path / "got.bin").read_bytes() == payload
        assert json.loads(fetched.stdout)["reported"]["reported"] is False  # the hub is away: kept

        wait_until(lambda: outbox_status(seller_home)["kinds"].count("heartbeat") >= 6, 60,
                   what="heartbeats piling up in the seller's outbox")
        while_away = outbox_status(seller_home)
        assert {"redemption", "confirmation", "receipt"} <= set(while_away["kinds"])
        assert while_away["pending"] == len(while_away["entries"]) and while_away["parked"] is None
        assert outbox_status(buyer_home)["pending"] == 1

        hub.start()  # the hub returns: same port, same database
        away = while_away["entries"]
        wait_until(lambda: set(away) <= set(delivered(seller_home)), 90, what="the piled-up traces delivered")
        node.send_signal(signal.SIGTERM)
        assert node.wait(30) == 0
        node = None
        done = subprocess.run([sys.executable, "-m", "node.cli", "--home", str(buyer_home), "outbox", "deliver"],
                              capture_output=True, text=True, env=node_env(), cwd=REPO, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["pending"] == 0

        runtime = build_runtime(settings)
        try:
            recorded = events(runtime.market, RECORDED)
        finally:
            runtime.close()
        seller_traces = [(e.seq, e.entry_hash) for e in recorded if e.device_id == device_id]
        assert seller_traces == delivered(seller_home)  # each delivered entry recorded once, in order
        assert set(away) <= set(seller_traces)
        assert [(e.seq, e.kind) for e in recorded if e.device_id == buyer_device] == [(1, "confirmation")]
        kinds = [e.kind for e in recorded if e.device_id == device_id]
        assert kinds.count("redemption") == kinds.count("receipt") == kinds.count("confirmation") == 1
    finally:
        if node is not None:
            node.kill()
            node.wait(10)
        hub.stop()
