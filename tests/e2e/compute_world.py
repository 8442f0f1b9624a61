"""What the end-to-end compute test stands on: the seller's node as real processes (``aim-node
serve`` for the uplink that delivers the node's one outbox, ``aim-node compute serve`` for the
metered sessions, both on one home), the example assets published and registered, and a count
of every request the hub received through the recording proxy.

The hub, its proxy and the accounts and channel helpers are the sale test's
(``tests/e2e/test_sale_end_to_end.py``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.e2e.sale_world import RecordingProxy, http_messages
from tests.e2e.test_newcomer_flow import free_port
from tests.e2e.test_sale_end_to_end import REPO, WEB, aim_node, node_env
from tests.helpers import wait_until

EXAMPLES = REPO / "node" / "compute" / "examples"


def hub_requests(proxy: RecordingProxy) -> list[str]:
    """The request line of every request the hub received so far (read while none is in flight)."""
    lines = []
    for capture in list(proxy.captures):
        for head, _ in http_messages(bytes(capture.request), responses=False):
            lines.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
    return lines


def direct(hub_env: dict[str, str]) -> str:
    """The hub's own address, around the proxy: what the test reads to observe the hub is not
    counted as the session's traffic."""
    return "http://" + hub_env["AIMARKET_BIND"]


@dataclass
class ComputeNode:
    """``aim-node compute serve`` on a fixed loopback port (so a restart listens where the
    buyer's session was)."""

    home: Path
    port: int
    proc: subprocess.Popen[str] | None = None
    starts: int = 0

    def start(self) -> ComputeNode:
        self.starts += 1
        log = (self.home / f"compute-{self.starts}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "--home", str(self.home), "compute", "serve", "--listen",
             f"127.0.0.1:{self.port}", "--workers", "1", "--final-grace", "0.5"],
            stdout=subprocess.PIPE, stderr=log, env=node_env(), cwd=REPO, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line and "listening" in json.loads(line), (self.home / f"compute-{self.starts}.log").read_text()
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL, mid-session: no shutdown code runs (its workers die with it)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()


@dataclass
class Seller:
    home: Path
    listings: dict[str, dict[str, Any]] = field(default_factory=dict)  # example name -> listing
    compute: ComputeNode | None = None
    uplink: subprocess.Popen[str] | None = None


# The example counts up to 1,000,000 rows a call: a session's budget must cover one call at most,
# which is more than the test's deposit; this seller counts at most 100.
CALL_CAPS = {"csvstats": 100}


def publish_example(hub_url: str, home: Path, tmp: Path, name: str, price_minor: int) -> dict[str, Any]:
    """Profile the example's manifest, publish it, register it for that listing (with this test's
    seller's cap per call, CALL_CAPS, so one call's worth fits the test channel's deposit)."""
    data = json.loads((EXAMPLES / f"{name}.json").read_text())
    if name in CALL_CAPS:
        data["metering"] = {**data.get("metering", {}), "max_units_per_call": CALL_CAPS[name]}
    manifest = tmp / f"{name}.json"
    manifest.write_text(json.dumps(data))
    report = tmp / f"{name}.profile.json"
    aim_node(home, "profile", str(manifest), "--manifest", "--out", str(report))
    published = aim_node(home, "publish", str(report), "--price", str(price_minor), "--currency", "USD",
                         "--licence", json.loads(manifest.read_text())["licence"], "--category", "tools")
    aim_node(home, "compute", "register", str(manifest), "--listing", published["id"])
    url = f"{hub_url}/v1/listings/{published['id']}"
    wait_until(lambda: WEB.get(url, timeout=10).ok, 30, what=f"the {name} listing in the catalogue", poll_s=0.2)
    return WEB.get(url, timeout=10).json()


def start_seller(world: dict[str, Any], tmp: Path, seller: dict[str, Any], prices: dict[str, int]) -> Seller:
    """Keys, enrollment, the examples published and registered; then the uplink (``aim-node
    serve``: no heartbeats, so every hub request during a session is the session's) and the
    compute server."""
    hub = world["hub"]
    home = tmp / "seller"
    delivery_port = free_port()
    aim_node(home, "init")
    aim_node(home, "enroll", "--hub", hub.url, "--api-key", seller["api_key"], "--name", "seller", "--endpoint",
             f"http://127.0.0.1:{delivery_port}")
    out = Seller(home)
    for name, price in prices.items():
        out.listings[name] = publish_example(hub.url, home, tmp, name, price)
    out.uplink = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "--home", str(home), "serve", "--listen", f"127.0.0.1:{delivery_port}",
         "--pump", "0.2", "--heartbeat", "0"],
        stdout=subprocess.PIPE, stderr=(home / "serve.log").open("w"), env=node_env(), cwd=REPO, text=True)
    world["nodes"].append(out.uplink)
    line = out.uplink.stdout.readline() if out.uplink.stdout else ""
    assert line and "listening" in json.loads(line), (home / "serve.log").read_text()
    out.compute = ComputeNode(home, free_port()).start()
    return out


def get_json(url: str, headers: dict[str, str]) -> dict[str, Any]:
    r = WEB.get(url, headers=headers, timeout=10)
    assert r.ok, r.text
    return r.json()


def wait_for_status(base: str, invocation_id: str, headers: dict[str, str], status: str,
                    timeout_s: float = 30) -> dict[str, Any]:
    """Poll the hub directly until the invocation reaches ``status``."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        try:
            seen.update(get_json(f"{base}/v1/invocations/{invocation_id}", headers))
        except requests.RequestException:
            return False
        return seen.get("status") == status

    wait_until(reached, timeout_s, what=f"invocation {invocation_id} {status}", poll_s=0.1)
    return dict(seen)
