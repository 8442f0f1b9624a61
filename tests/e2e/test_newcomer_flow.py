"""The README's first run, end to end with real processes on loopback: `aimarket serve`
(gunicorn, embedded store), then register, log in, create an API key, `aim-node init`,
`aim-node enroll`, a device-signed request, and a key rotation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.hub_client import HubClient, HubError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "AIMARKET_DATA_DIR": str(tmp_path / "hub"), "AIMARKET_BCRYPT_ROUNDS": "4",
           "AIMARKET_BIND": f"127.0.0.1:{port}", "AIMARKET_TREE_HEAD_EVERY_S": "1"}
    env.pop("AIMARKET_DATABASE_URL", None)
    log_path = tmp_path / "hub.log"  # a file, not a pipe: a full pipe would stall the hub
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "serve", "--workers", "2"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                HubClient(url, timeout_s=2).request("GET", "/healthz")
                break
            except HubError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(log_path.read_text()[-5000:])
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        print(log_path.read_text()[-5000:])  # pytest shows it when the test fails


def aim_node(home: Path, *args: str) -> dict:
    env = {**os.environ, "AIM_NODE_HOME": str(home), "AIM_NODE_PASSPHRASE": "a long node passphrase",
           "AIM_NODE_KDF_PROFILE": "test"}
    out = subprocess.run([sys.executable, "-m", "node.cli", *args], env=env, capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_newcomer_flow(hub: str, tmp_path: Path) -> None:
    client = HubClient(hub)
    discovery = client.request("GET", "/.well-known/ai-market.json")
    assert discovery["signing_key"]["public_key"].startswith("z6Mk")
    client.request("POST", "/v1/accounts", {"email": "seller@example.com", "password": "seller passphrase",
                                            "roles": ["seller"]})
    session = client.request("POST", "/v1/sessions", {"email": "seller@example.com",
                                                      "password": "seller passphrase"})["access_token"]
    api_key = client.request("POST", "/v1/api-keys", {"name": "my node"}, bearer=session)["secret"]

    home = tmp_path / "node"
    init = aim_node(home, "init")
    assert init["signing_key"].startswith("z6Mk")
    assert (home / "keystore.json").stat().st_mode & 0o777 == 0o600
    enrolled = aim_node(home, "enroll", "--hub", hub, "--api-key", api_key, "--name", "laptop")
    assert enrolled["enrolled"] is True
    me = aim_node(home, "whoami")
    assert me["id"] == enrolled["device_id"] and me["name"] == "laptop"
    rotated = aim_node(home, "rotate-key")
    assert rotated["kid"] != enrolled["kid"]
    assert aim_node(home, "whoami")["kid"] == rotated["kid"]
    devices = client.request("GET", "/v1/devices", bearer=api_key)["items"]
    deadline = time.monotonic() + 10  # the devices read model follows the log asynchronously
    while not devices and time.monotonic() < deadline:
        time.sleep(0.2)
        devices = client.request("GET", "/v1/devices", bearer=api_key)["items"]
    assert [d["device_id"] for d in devices] == [enrolled["device_id"]]
    # the embedded hub signs the audit tree's heads itself (no separate worker)
    deadline = time.monotonic() + 20
    heads = client.request("GET", "/v1/audit/tree-heads")["items"]
    while not heads and time.monotonic() < deadline:
        time.sleep(0.3)
        heads = client.request("GET", "/v1/audit/tree-heads")["items"]
    assert heads and heads[-1]["tree_size"] >= 1, heads


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "node"
    aim_node(home, "init")
    env = {**os.environ, "AIM_NODE_HOME": str(home), "AIM_NODE_PASSPHRASE": "wrong"}
    out = subprocess.run([sys.executable, "-m", "node.cli", "whoami"], env=env, capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).parents[2])
    assert out.returncode == 2
    assert "keystore_locked" in out.stderr and "wrong passphrase" in out.stderr
    assert "Traceback" not in out.stderr
