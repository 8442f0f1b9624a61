"""A small delivery world for tests: a hub key, a seller node home, a registered file, buyers, tokens."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.model.delivery import issue_delivery_token, jwk_thumbprint
from domain.model.jcs import canonical_json
from domain.model.keys import KxPrivateKey, SigningKey, VerifyKey, b64url, b64url_decode
from node import keystore as ks
from node.publishing import register_object

REPO = Path(__file__).resolve().parents[2]
BLOCK = 64 * 1024
PASSPHRASE = "correct horse battery staple"
DEVICE_ID = "3f1c2b9e-6d7a-5e4f-8a9b-0c1d2e3f4a5b"
LISTING_ID = "0b7e6f0e-1d2c-5b3a-9f8e-7d6c5b4a3f2e"
HUB_URL = "http://hub.test"


@dataclass
class World:
    root: Path
    hub_key: SigningKey = field(default_factory=SigningKey.generate)
    device_key: SigningKey = field(default_factory=SigningKey.generate)
    device_kx: KxPrivateKey = field(default_factory=KxPrivateKey.generate)
    buyer_key: SigningKey = field(default_factory=SigningKey.generate)
    size: int = 3 * BLOCK - 1000
    blocks: int = BLOCK

    def __post_init__(self) -> None:
        self.home = self.root / "node"
        self.home.mkdir(parents=True)
        ks.create(self.home / "keystore.json", PASSPHRASE, device_id=DEVICE_ID, hub_url=HUB_URL,
                  signing_key=self.device_key, kx_key=self.device_kx, ops_limit=ks.TEST_OPS_LIMIT,
                  mem_limit=ks.TEST_MEM_LIMIT)
        self.data_dir = self.root / "data"
        self.data_dir.mkdir()
        self.file = self.data_dir / "object.bin"
        self.payload = os.urandom(self.size)
        self.file.write_bytes(self.payload)
        self.delivery = register_object(self.home, LISTING_ID, self.file, block_size=self.blocks)

    @property
    def hub_keys(self) -> dict[str, VerifyKey]:
        return {self.hub_key.key_id: self.hub_key.verify_key}

    @property
    def hub_key_arg(self) -> str:
        return f"{self.hub_key.key_id}={self.hub_key.verify_key.to_multibase()}"

    def claims(self, *, buyer: SigningKey | None = None, jti: str = "token-0000000000000001", now: int | None = None,
               **overrides: Any) -> dict[str, Any]:
        now = int(time.time()) if now is None else now
        buyer = buyer or self.buyer_key
        claims = {
            "iss": HUB_URL, "aud": DEVICE_ID, "sub": "purchase-1", "jti": jti, "iat": now, "start_by": now + 300,
            "exp": now + 3600, "listing_id": LISTING_ID, "listing_version": 1,
            "content_hash": self.delivery["object_hash"], "size_bytes": self.delivery["size_bytes"],
            "byte_limit": 2 * self.delivery["size_bytes"], "blocks": self.delivery["blocks"],
            "cnf": {"jkt": jwk_thumbprint(buyer.verify_key)},
            "seller_keys": {"ed25519": self.device_key.verify_key.to_multibase(),
                            "x25519": self.device_kx.public_key.to_multibase()},
        }
        claims.update(overrides)
        return claims

    def token(self, **options: Any) -> str:
        return issue_delivery_token(self.claims(**options), self.hub_key, self.hub_key.key_id)


def tampered(token: str, **changes: Any) -> str:
    """``token`` with claims changed and the hub's signature kept (what a forger can do)."""
    header, payload, signature = token.split(".")
    claims = {**json.loads(b64url_decode(payload)), **changes}
    return f"{header}.{b64url(canonical_json(claims))}.{signature}"


def env() -> dict[str, str]:
    return {**os.environ, "AIM_NODE_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(REPO)}


class Node:
    """``aim-node serve`` as a real process on a loopback port."""

    def __init__(self, world: World, *extra: str, script: list[str] | None = None, port: int = 0) -> None:
        self.world = world
        command = script or [sys.executable, "-m", "node.cli"]
        offline = [] if "--hub" in extra else ["--offline"]  # the world's hub (hub.test) is never reached
        self.proc = subprocess.Popen(
            [*command, "--home", str(world.home), "serve", "--listen", f"127.0.0.1:{port}", "--hub-key",
             world.hub_key_arg, *offline, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), cwd=REPO, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node did not start: {self.proc.stderr.read()}")
        self.address = json.loads(line)["listening"]
        self.port = int(self.address.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc.stdout.close()
        self.proc.stderr.close()


def served(world: World, jti: str) -> list[tuple[int, int]]:
    """The node's ``[start, end)`` per session for ``jti``, from its delivery database."""
    db = sqlite3.connect(world.home / "delivery.sqlite")
    try:
        return [(s, e) for s, e in db.execute('SELECT start, "end" FROM served WHERE jti = ? ORDER BY session', (jti,))]
    finally:
        db.close()


def wait_for(predicate: Any, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def verified_blocks(out: Path) -> int:
    state = out.with_name(out.name + ".partial.json")
    try:
        return int(json.loads(state.read_text())["verified_blocks"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0
