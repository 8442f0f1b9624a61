"""`aim-node buy` and `aim-node fetch PURCHASE` against a real hub on loopback (the app under
uvicorn on a thread, embedded store) and a real seller node (`aim-node serve`, a process)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from falcon import testing

from api.app import create_app
from domain.model.delivery import jwk_thumbprint
from domain.model.device import enrollment_message
from domain.model.keys import KxPrivateKey, SigningKey, b64url
from node import keystore as ks
from node.delivery.buy import buy, stored_purchase
from node.delivery.keys import save_buyer_key
from node.hub_client import HubClient, HubError
from node.publishing import delivery_commitment, publish_credential, register_object
from ops.bootstrap import build_runtime
from tests.catalogue.helpers import listing
from tests.helpers import auth, device_jwt, login, register, wait_until
from tests.money.conftest import open_card_channel, person
from tests.stubs import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET

REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "a long node passphrase"
BLOCK = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub(make_settings, stripe_stub):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    runtime = build_runtime(make_settings("sqlite", hub_url=url, stripe_api_key=DEFAULT_API_KEY,
                                          stripe_webhook_secret=DEFAULT_WEBHOOK_SECRET,
                                          stripe_api_base=stripe_stub.url))
    server = uvicorn.Server(uvicorn.Config(create_app(runtime=runtime), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, what="the hub listening")
    yield {"url": url, "runtime": runtime, "client": testing.TestClient(create_app(runtime=runtime))}
    server.should_exit = True
    thread.join(20)
    runtime.close()


def env() -> dict[str, str]:
    return {**os.environ, "AIM_NODE_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(REPO)}


@pytest.fixture
def seller_node(hub, tmp_path: Path):
    """An enrolled seller node serving one registered file; yields the listing and the payload."""
    client, url = hub["client"], hub["url"]
    seller = register(client, roles=["seller"])
    session = login(client, seller["email"])
    api_key = client.simulate_post("/v1/api-keys", json={"name": "node"}, headers=auth(session)).json["secret"]
    key, kx, port = SigningKey.generate(), KxPrivateKey.generate(), free_port()
    challenge = client.simulate_post("/v1/devices/challenges", json={}, headers=auth(api_key)).json["challenge"]
    fields = {"challenge": challenge, "name": "seller", "endpoint": f"http://127.0.0.1:{port}",
              "public_key": key.verify_key.to_multibase(), "kx_public_key": kx.public_key.to_multibase()}
    signature = b64url(key.sign(enrollment_message(account_id=seller["id"], **fields)))
    device = client.simulate_post("/v1/devices", json={**fields, "signature": signature}, headers=auth(api_key)).json
    home = tmp_path / "seller"
    home.mkdir()
    ks.create(home / "keystore.json", PASSPHRASE, device_id=device["id"], hub_url=url, signing_key=key, kx_key=kx,
              ops_limit=ks.TEST_OPS_LIMIT, mem_limit=ks.TEST_MEM_LIMIT)
    payload = os.urandom(5 * BLOCK - 123) + b"PAYLOAD-MARKER-7f3a"
    (tmp_path / "files").mkdir()
    data = tmp_path / "files" / "object.bin"
    data.write_bytes(payload)
    delivery = delivery_commitment(data, BLOCK)
    published = client.simulate_post(
        "/v1/listings", json=publish_credential(key, listing("Delivered by the node", price_minor=1500,
                                                             delivery=delivery)),
        headers=auth(device_jwt(key, device["id"], int(time.time()), audience=url)))
    assert published.status_code == 201, published.json
    register_object(home, published.json["id"], data, block_size=BLOCK)
    signing = client.simulate_get("/.well-known/ai-market.json").json["signing_key"]
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "--home", str(home), "serve", "--listen",
                             f"127.0.0.1:{port}", "--offline", "--hub-key",
                             f"{signing['kid']}={signing['public_key']}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), cwd=REPO, text=True)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    yield {"listing_id": published.json["id"], "payload": payload, "device_id": device["id"]}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()


@pytest.fixture
def buyer(hub, stripe_stub) -> dict[str, Any]:
    client = hub["client"]
    b = person(client, ["buyer"])
    b["channel_id"] = open_card_channel(client, stripe_stub, b, 4000)[0]
    b["api_key"] = client.simulate_post("/v1/api-keys", json={"name": "buyer node"}, headers=b["headers"]).json[
        "secret"]
    return b


def aim_node(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "--home", str(home), *args], env=env(),
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_buy_then_fetch_by_purchase_id(hub, seller_node, buyer, tmp_path: Path) -> None:
    home = tmp_path / "buyer"
    r = aim_node(home, "buy", seller_node["listing_id"], "--channel", buyer["channel_id"], "--hub", hub["url"],
                 "--api-key", buyer["api_key"])
    assert r.returncode == 0, r.stderr
    bought = json.loads(r.stdout)
    assert (bought["status"], bought["price_minor"], bought["fee_minor"]) == ("issued", 1500, 75)
    folder = home / "purchases" / bought["purchase_id"]
    assert {p.name for p in folder.iterdir()} == {"buyer.jwk", "token.jwt", "purchase.json"}
    assert (folder / "token.jwt").stat().st_mode & 0o777 == 0o600 and (folder / "buyer.jwk").stat().st_mode & 0o777 == 0o600
    assert not list((home / "purchases").glob("pending-*"))
    out = tmp_path / "got.bin"
    r = aim_node(home, "fetch", bought["purchase_id"], "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == seller_node["payload"]
    assert json.loads(r.stdout)["outcome"] == "complete"
    # --token/--key still work, and the two forms do not mix.
    r = aim_node(home, "fetch", bought["purchase_id"], "--token", str(folder / "token.jwt"), "--out", str(out))
    assert r.returncode == 2 and r.stderr.startswith("error [invalid_input]") and len(r.stderr.splitlines()) == 1
    r = aim_node(home, "fetch", "--out", str(out))
    assert r.returncode == 2 and "PURCHASE" in r.stderr


def test_buy_with_out_fetches_at_once_and_refusals_are_one_line(hub, seller_node, buyer, tmp_path: Path) -> None:
    home = tmp_path / "buyer"
    out = tmp_path / "now.bin"
    r = aim_node(home, "buy", seller_node["listing_id"], "--channel", buyer["channel_id"], "--hub", hub["url"],
                 "--api-key", buyer["api_key"], "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == seller_node["payload"]
    r = aim_node(home, "buy", seller_node["listing_id"], "--channel", buyer["channel_id"], "--hub", hub["url"],
                 "--api-key", buyer["api_key"])
    assert r.returncode == 0, r.stderr  # 3000 of 4000 spent
    r = aim_node(home, "buy", seller_node["listing_id"], "--channel", buyer["channel_id"], "--hub", hub["url"],
                 "--api-key", buyer["api_key"])
    assert r.returncode == 2 and r.stderr.startswith("error [channel_exhausted]") and len(r.stderr.splitlines()) == 1
    r = aim_node(home, "buy", "not-a-listing", "--channel", buyer["channel_id"], "--hub", hub["url"],
                 "--api-key", buyer["api_key"])
    assert r.returncode == 2 and r.stderr.startswith("error [invalid_input]")
    r = aim_node(home, "fetch", "00000000-0000-4000-8000-000000000000", "--out", str(out))
    assert r.returncode == 2 and "no purchase" in r.stderr


def test_a_retry_after_a_lost_answer_pays_once(hub, seller_node, buyer, tmp_path: Path) -> None:
    home = tmp_path / "buyer"
    client = HubClient(hub["url"])
    real = client.request
    calls: list[int] = []

    def lossy(method: str, path: str, body: Any = None, **kw: Any) -> Any:
        answer = real(method, path, body, **kw)
        calls.append(1)
        if len(calls) == 1:  # the hub recorded it; the answer never arrived
            raise HubError(0, "hub_unreachable", "connection reset")
        return answer

    client.request = lossy  # type: ignore[method-assign]
    bought = buy(client, seller_node["listing_id"], buyer["channel_id"], bearer=buyer["api_key"], home=home,
                 sleep=lambda s: None)
    assert len(calls) == 2
    channel = hub["client"].simulate_get(f"/v1/channels/{buyer['channel_id']}", headers=buyer["headers"]).json
    assert channel["spent_minor"] == 1500  # paid once
    assert stored_purchase(home, bought.purchase_id).token == bought.token
    # A process killed after sending: the pending request is sent again by the next run.
    pending_key = SigningKey.generate()
    folder = home / "purchases"
    stem = f"pending-{seller_node['listing_id']}-{buyer['channel_id']}"
    save_buyer_key(pending_key, folder / f"{stem}.jwk")
    (folder / f"{stem}.json").write_text(json.dumps({"idempotency_key": "crashed-run"}))
    first = buy(HubClient(hub["url"]), seller_node["listing_id"], buyer["channel_id"], bearer=buyer["api_key"],
                home=home)
    assert first.purchase["token"]["cnf_jkt"] == jwk_thumbprint(pending_key.verify_key)
    assert not list(folder.glob("pending-*"))
