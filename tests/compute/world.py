"""A small compute world for tests: a hub key, a seller node home with registered assets, buyers,
invoke tokens, and ``aim-node compute serve`` as a real process on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.model.delivery import jwk_thumbprint
from domain.model.invoke import issue_invoke_token
from domain.model.keys import KxPrivateKey, SigningKey, VerifyKey
from node import keystore as ks
from node.compute.registry import Registry
from node.compute.store import SessionStore
from node.outbox import Outbox

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "node" / "compute" / "examples"
PASSPHRASE = "correct horse battery staple"
DEVICE_ID = "5d2c1b0a-9e8f-5a7b-8c6d-1e2f3a4b5c6d"
HUB_URL = "http://hub.test"
ECHO = "00000000-0000-5000-8000-00000000ec40"
SLOW = "00000000-0000-5000-8000-0000000051e0"
FAIL = "00000000-0000-5000-8000-00000000fa11"
BIG = "00000000-0000-5000-8000-000000000b19"
ROWS = "00000000-0000-5000-8000-0000000000a0"
WRONG = "00000000-0000-5000-8000-00000000bad0"
CSV = "00000000-0000-5000-8000-000000000c50"
EMBED = "00000000-0000-5000-8000-00000000e3bd"
BARE = "00000000-0000-5000-8000-00000000ba4e"
ENV = "00000000-0000-5000-8000-0000000000e7"

TEST_PIPELINES = {
    SLOW: ("tests.compute.pipelines:sleep", "calls", {}, {"timeout_ms": 4000}),
    FAIL: ("tests.compute.pipelines:fail", "calls", {}, {}),
    BIG: ("tests.compute.pipelines:big", "bytes", {"of": "output", "max_units_per_call": 8 * 2**20},
          {"max_output_bytes": 8 * 2**20}),
    ROWS: ("tests.compute.pipelines:rows", "rows", {"pointer": "/rows", "max_units_per_call": 1000}, {}),
    WRONG: ("tests.compute.pipelines:wrong_output", "calls", {}, {}),
    ENV: ("tests.compute.pipelines:environment", "calls", {}, {}),
}


def manifest(entry: str, unit: str, metering: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    return {"name": entry, "kind": "pipeline", "framework": "python", "size_bytes": 0, "licence": "CC0-1.0",
            "metering_unit": unit, "entry_point": entry, "input_schema": {"type": "object"},
            "output_schema": {"type": "object"}, "metering": metering, "limits": limits}


@dataclass
class World:
    root: Path
    embed: bool = False
    hub_key: SigningKey = field(default_factory=SigningKey.generate)
    device_key: SigningKey = field(default_factory=SigningKey.generate)
    device_kx: KxPrivateKey = field(default_factory=KxPrivateKey.generate)
    buyer_key: SigningKey = field(default_factory=SigningKey.generate)

    def __post_init__(self) -> None:
        self.home = self.root / "node"
        self.home.mkdir(parents=True)
        ks.create(self.home / "keystore.json", PASSPHRASE, device_id=DEVICE_ID, hub_url=HUB_URL,
                  signing_key=self.device_key, kx_key=self.device_kx, ops_limit=ks.TEST_OPS_LIMIT,
                  mem_limit=ks.TEST_MEM_LIMIT)
        registry = Registry(self.home / "compute.sqlite")
        try:
            now = int(time.time() * 1000)
            registry.register(ECHO, EXAMPLES / "echo.json", now)
            registry.register(BARE, EXAMPLES / "echo.json", now)
            registry.register(CSV, EXAMPLES / "csvstats.json", now)
            if self.embed:
                registry.register(EMBED, EXAMPLES / "embed.json", now)
            for listing, (entry, unit, metering, limits) in TEST_PIPELINES.items():
                path = self.root / f"{listing}.json"
                data = manifest(entry, unit, metering, limits)
                if listing == WRONG:
                    data["output_schema"] = {"type": "object", "required": ["answer"]}
                path.write_text(json.dumps(data))
                registry.register(listing, path, now)
        finally:
            registry.close()

    @property
    def hub_keys(self) -> dict[str, VerifyKey]:
        return {self.hub_key.key_id: self.hub_key.verify_key}

    @property
    def hub_key_arg(self) -> str:
        return f"{self.hub_key.key_id}={self.hub_key.verify_key.to_multibase()}"

    def claims(self, *, listing: str = ECHO, unit: str = "calls", price: int = 7, budget: int = 10_000,
               max_call_units: int = 1, concurrency: int = 4, buyer: SigningKey | None = None,
               jti: str | None = None, now: int | None = None, **overrides: Any) -> dict[str, Any]:
        now = int(time.time()) if now is None else now
        claims = {
            "iss": HUB_URL, "aud": DEVICE_ID, "sub": f"invocation-{uuid.uuid4().hex[:12]}",
            "jti": jti or f"invoke-{uuid.uuid4().hex}", "iat": now, "start_by": now + 300, "exp": now + 3600,
            "listing_id": listing, "listing_version": 1, "unit": unit, "unit_price_minor": price, "currency": "USD",
            "budget_minor": budget, "max_call_units": max_call_units, "max_concurrency": concurrency,
            "cnf": {"jkt": jwk_thumbprint((buyer or self.buyer_key).verify_key)},
            "seller_keys": {"ed25519": self.device_key.verify_key.to_multibase(),
                            "x25519": self.device_kx.public_key.to_multibase()},
        }
        claims.update(overrides)
        return claims

    def token(self, **options: Any) -> str:
        return issue_invoke_token(self.claims(**options), self.hub_key, self.hub_key.key_id)

    def store(self) -> SessionStore:
        return SessionStore(self.home / "compute.sqlite", self.home / "outbox.sqlite")

    def outbox(self) -> list[tuple[str, dict[str, Any]]]:
        outbox = Outbox(self.home / "outbox.sqlite")
        try:
            outbox.verify_chain()
            return [(e.kind, e.body) for e in outbox.entries()]
        finally:
            outbox.close()


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "AIM_NODE_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(REPO), **extra}


class Node:
    """``aim-node compute serve`` as a real process on a loopback port."""

    def __init__(self, world: World, *extra: str, port: int = 0, environ: dict[str, str] | None = None,
                 script: list[str] | None = None) -> None:
        self.world = world
        self.proc = subprocess.Popen(
            [*(script or [sys.executable, "-m", "node.cli"]), "--home", str(world.home), "compute", "serve", "--listen",
             f"127.0.0.1:{port}", "--hub-key", world.hub_key_arg, "--workers", "2", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ or env(), cwd=REPO, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node did not start: {self.proc.stderr.read()}")
        self.started = json.loads(line)
        self.address = self.started["listening"]
        self.port = int(self.address.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL the whole process group's server (its workers die with their pipes)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_pipes()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe and not pipe.closed:
                pipe.close()
