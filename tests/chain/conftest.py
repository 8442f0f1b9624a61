"""Fixtures for the chain adapter: a fresh in-process EVM per test, and a hardhat node.

The hardhat node is a real process on loopback. It needs ``npm ci --prefix ops/chain``;
without it the fixture fails loudly (never skips), so CI cannot silently lose the HTTP tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount

from ops.adapters.evm import wallet
from ops.adapters.evm.channels import ChainChannels
from ops.adapters.evm.deploy import Deployment, deploy_all
from ops.adapters.evm.evm import Chain, dev_accounts, in_process_chain

REPO = Path(__file__).resolve().parents[2]
OPS_CHAIN = REPO / "ops" / "chain"
BUYER_FUNDS = 10_000_000  # 10.000000 TUSD
HARDHAT_START_TIMEOUT_S = 60


@dataclass(frozen=True)
class Actors:
    """Named dev accounts (hardhat's defaults)."""

    deployer: LocalAccount
    operator: LocalAccount
    platform: LocalAccount
    buyer: LocalAccount
    seller1: LocalAccount
    seller2: LocalAccount
    stranger: LocalAccount


@dataclass(frozen=True)
class World:
    """A deployed system with a funded buyer who approved the Channels contract."""

    chain: Chain
    actors: Actors
    deployment: Deployment
    hub: ChainChannels

    def now(self) -> int:
        return int(self.chain.w3.eth.get_block("latest")["timestamp"])


def _actors() -> Actors:
    a = dev_accounts(7)
    return Actors(*a)


def build_world(chain: Chain) -> World:
    """Deploy token + channels, mint to the buyer, approve the contract."""
    actors = _actors()
    deployment = deploy_all(
        chain, actors.deployer, operator=actors.operator.address, fee_recipient=actors.platform.address
    )
    hub = ChainChannels(
        chain,
        channels_address=deployment.channels,
        token_address=deployment.token,
        operator=actors.operator,
    )
    wallet.mint(chain, actors.deployer, deployment.token, actors.buyer.address, BUYER_FUNDS)
    approve = wallet.approve(chain, actors.buyer, deployment.token, deployment.channels, 2**256 - 1)
    hub.wait(approve)
    return World(chain=chain, actors=actors, deployment=deployment, hub=hub)


@pytest.fixture
def world() -> World:
    """A fresh in-process chain with everything deployed (isolated per test)."""
    return build_world(in_process_chain())


# ------------------------------------------------------------------ hardhat node


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rpc_ready(url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return "result" in json.loads(response.read())
    except OSError:
        return False


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the process group this fixture created (npx and its node child), by its id."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def hardhat_url() -> Iterator[str]:
    """Start ``npx hardhat node`` on a free loopback port; yield its URL; stop it."""
    if not (OPS_CHAIN / "node_modules" / ".bin" / "hardhat").exists():
        pytest.fail(
            "hardhat is not installed: run `npm ci --prefix ops/chain` (node >= 18) before the chain tests",
            pytrace=False,
        )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="hardhat-node-", suffix=".log", delete=False)
    env = {**os.environ, "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true"}
    # --no: never let npx download anything; own session so teardown stops npx and node together.
    process = subprocess.Popen(
        ["npx", "--no", "hardhat", "node", "--hostname", "127.0.0.1", "--port", str(port)],
        cwd=OPS_CHAIN,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + HARDHAT_START_TIMEOUT_S
        while not _rpc_ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                output = Path(log.name).read_text(errors="replace")[-2000:]
                pytest.fail(f"hardhat node did not start on {url}:\n{output}", pytrace=False)
            time.sleep(0.2)
        yield url
    finally:
        _stop_group(process)
        log.close()
        os.unlink(log.name)
