"""End to end on a real ``hardhat node`` (loopback) with PostgreSQL: the buyer deposits on
the contract, the hub credits the channel from the event, debits carry vouchers, the
channel closes and the settlement worker settles; token balances on chain are exact.
Then the same with the worker as a real process SIGKILLed between submit and confirm,
and restarted: exactly one ChannelSettled log."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from falcon import testing

from api.app import create_app
from domain.model import ledger
from ops.adapters.evm.deploy import deploy_all
from ops.adapters.evm.evm import dev_accounts, http_chain
from ops.bootstrap import build_runtime
from tests.chain.conftest import hardhat_url  # noqa: F401 - the loopback hardhat node (own instance here)
from tests.conftest import PG_URL, TEST_SECRET
from tests.money.chain_helpers import BUYER_MINT, debit, deposit, open_channel, party, settle_logs, withdraw_all
from tests.money.conftest import catch_up
from workers.jobs import Jobs

REPO = Path(__file__).resolve().parents[2]
HUB_URL = "http://hub.test"
PAUSE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def hh(hardhat_url: str) -> dict[str, Any]:  # noqa: F811 - the imported fixture
    chain = http_chain(hardhat_url, poll_latency_s=0.01)
    accounts = dev_accounts(12)  # hardhat funds 20; each test pays fresh wallets
    deployment = deploy_all(chain, accounts[0], operator=accounts[1].address, fee_recipient=accounts[2].address)
    return {"url": hardhat_url, "chain": chain, "accounts": accounts, "deployment": deployment}


@pytest.fixture
def hub(hh, make_settings):
    a, d = hh["accounts"], hh["deployment"]
    settings = make_settings("postgres", hub_url=HUB_URL, chain_rpc_url=hh["url"], channels_address=d.channels,
                             token_address=d.token, operator_key_hex=a[1].key.hex())
    rt = build_runtime(settings)
    yield {"rt": rt, "client": testing.TestClient(create_app(runtime=rt)), "chain_client": rt.market.money.chain(), **hh}
    rt.close()


def _closed_channel(hub: dict[str, Any], buyer_key: Any, s1_key: Any, s2_key: Any) -> tuple[dict, list, int]:
    """Deposit 2.000000 TUSD, debit two sellers with vouchers, close; (channel, parties, buyer before)."""
    client, chain, cc = hub["client"], hub["chain"], hub["chain_client"]
    buyer = party(client, ["buyer"], buyer_key, HUB_URL)
    s1, s2 = party(client, ["seller"], s1_key, HUB_URL), party(client, ["seller"], s2_key, HUB_URL)
    before = cc.token_balance(buyer_key.address) + BUYER_MINT
    now = int(chain.w3.eth.get_block("latest")["timestamp"])
    tx, _ = deposit(chain, hub["accounts"][0], hub["deployment"], buyer_key, 2_000_000, now + 7200, hub=cc)
    opened = open_channel(client, buyer, tx)
    assert opened.status_code == 201, opened.json
    channel = opened.json
    domain = cc.domain()
    for seller, amount, cumulative in ((s1, 700_000, 700_000), (s2, 333_333, 1_033_333), (s1, 1, 1_033_334)):
        r = debit(client, buyer, channel, seller, amount, cumulative=cumulative, domain=domain)
        assert r.status_code == 201, r.json
    closed = client.simulate_post(f"/v1/channels/{channel['id']}/close", headers=buyer.headers)
    assert closed.status_code == 200 and closed.json["status"] == "closing"
    return channel, [buyer, s1, s2], before


def _assert_paid_exactly(hub: dict[str, Any], channel: dict, parties: list, buyer_before: int) -> None:
    buyer, s1, s2 = parties
    cc, platform = hub["chain_client"], hub["accounts"][2].address
    assert len(settle_logs(hub["chain"], hub["deployment"].channels, channel["chain_channel_id"])) == 1
    platform_before = cc.token_balance(platform)
    credited = cc.withdrawable(platform)
    withdraw_all(cc, s1.key.address, s2.key.address, platform, buyer.key.address)
    # fees: floor(700000 * 5%) + floor(333333 * 5%) + floor(1 * 5%) = 35000 + 16666 + 0
    assert cc.token_balance(s1.key.address) == 700_001 - 35_000
    assert cc.token_balance(s2.key.address) == 333_333 - 16_666
    assert credited == 51_666 and cc.token_balance(platform) == platform_before + 51_666
    assert cc.token_balance(buyer.key.address) == buyer_before - 1_033_334
    view = hub["rt"].market.money.channel(channel["id"]).to_public()
    assert (view["status"], view["settled_minor"], view["refunded_minor"]) == ("settled", 1_033_334, 966_666)
    catch_up(hub["rt"])
    rows = hub["rt"].views.fetchall("SELECT * FROM ledger_balances")
    ledger.check_balances({(r["account"], r["currency"]): int(r["balance_minor"]) for r in rows})


def test_worker_settles_on_hardhat(hub: dict[str, Any]) -> None:
    a = hub["accounts"]
    channel, parties, before = _closed_channel(hub, a[3], a[4], a[5])
    catch_up(hub["rt"])
    broker = StubBroker()
    broker.emit_after("process_boot")
    jobs = Jobs(broker, lambda: hub["rt"])
    worker = Worker(broker, worker_timeout=100)
    worker.start()
    try:
        jobs.sweep_settlements.send()  # the cron job: finds the closing channel, enqueues it
        broker.join("settlements", timeout=60_000)
        worker.join()
    finally:
        worker.stop()
    assert hub["rt"].market.settlement.settlement(channel["id"]).status == "confirmed"
    _assert_paid_exactly(hub, channel, parties, before)


def _worker_env(hub: dict[str, Any], **extra: str) -> dict[str, str]:
    s = hub["rt"].settings
    return {**os.environ, "AIMARKET_DATABASE_URL": PG_URL, "AIMARKET_DB_SCHEMA": s.db_schema,
            "AIMARKET_SECRET": TEST_SECRET, "AIMARKET_HUB_URL": HUB_URL, "AIMARKET_DATA_DIR": str(s.data_dir),
            "AIMARKET_BCRYPT_ROUNDS": "4", "AIMARKET_CHAIN_RPC_URL": s.chain_rpc_url,
            "AIMARKET_CHANNELS_ADDRESS": s.channels_address, "AIMARKET_TOKEN_ADDRESS": s.token_address,
            "AIMARKET_OPERATOR_KEY": s.operator_key_hex, **extra}


def _run_until_paused(env: dict[str, str], channel_id: str, stage: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "tests.money.settle_process", channel_id, "--pause-after", stage],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    # A reader thread, not select(): the worker prints several lines (started, stage:...)
    # and select() on the pipe cannot see lines already read into Python's buffer.
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if lines.get(timeout=1).strip().startswith("paused:"):
                return process
        except queue.Empty:
            if process.poll() is not None:
                break
    process.kill()
    pytest.fail(f"settlement worker did not pause (exit {process.poll()})")


@pytest.mark.parametrize("stage", ["submitted", "recorded"])
def test_worker_sigkilled_between_submit_and_confirm(hub: dict[str, Any], stage: str) -> None:
    a = hub["accounts"]
    keys = {"submitted": (a[6], a[7], a[8]), "recorded": (a[9], a[10], a[11])}[stage]
    channel, parties, before = _closed_channel(hub, *keys)
    market = hub["rt"].market

    process = _run_until_paused(_worker_env(hub), channel["id"], stage)
    process.kill()  # SIGKILL: no cleanup, no chance to record anything more
    process.wait(timeout=10)
    killed = market.settlement.settlement(channel["id"])
    assert killed.status == "submitted" and killed.tx_hash == ""
    broadcast = hub["chain_client"].receipt(killed.live["tx_hash"])
    assert (broadcast is not None) == (stage == "submitted")  # "recorded": killed before the broadcast

    done = subprocess.run([sys.executable, "-m", "tests.money.settle_process", channel["id"]], cwd=REPO,
                          env=_worker_env(hub), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "confirmed" and len(result["submissions"]) == 1
    assert result["tx_hash"] == killed.live["tx_hash"]
    assert uuid.UUID(result["id"])
    _assert_paid_exactly(hub, channel, parties, before)
