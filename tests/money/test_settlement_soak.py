"""On a loopback ``hardhat node`` with PostgreSQL and real worker processes: two or three
settlement workers race on one channel, SIGKILLed at random moments (``settle_race``), and
every run ends with exactly one close on chain and the ledger equal to it; and
``aimarket audit verify --chain`` names a channel settled behind the hub's back until the
reconcile sweep records it.

``AIMARKET_SETTLE_SOAK_RUNS`` (default 2) sets the number of races; the 20-run soak is
``ops/bench/settlement_race.py``, which also sets ``AIMARKET_SETTLE_SOAK_REPORT`` (a file
the results are written to as JSON)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from falcon import testing

from api.app import create_app
from domain.model.base import Meta
from ops.adapters.evm.deploy import deploy_all
from ops.adapters.evm.evm import dev_accounts, http_chain
from ops.bootstrap import build_runtime
from tests.chain.conftest import hardhat_url  # noqa: F401 - the loopback hardhat node (own instance here)
from tests.conftest import PG_URL, TEST_SECRET
from tests.money.conftest import catch_up
from tests.money.settle_race import REPO, check_settled_once, closed_channel, race_once
from workers.settlement_reconcile import reconcile_channel

HUB_URL = "http://hub.test"
RUNS = int(os.environ.get("AIMARKET_SETTLE_SOAK_RUNS", "2"))


@pytest.fixture(scope="module")
def hh(hardhat_url: str) -> dict[str, Any]:  # noqa: F811 - the imported fixture
    chain = http_chain(hardhat_url, poll_latency_s=0.01)
    accounts = dev_accounts(3)  # deployer (funds every fresh wallet), operator, fee recipient
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


def _env(hub: dict[str, Any]) -> dict[str, str]:
    s = hub["rt"].settings
    return {**os.environ, "AIMARKET_DATABASE_URL": PG_URL, "AIMARKET_DB_SCHEMA": s.db_schema,
            "AIMARKET_SECRET": TEST_SECRET, "AIMARKET_HUB_URL": HUB_URL, "AIMARKET_DATA_DIR": str(s.data_dir),
            "AIMARKET_BCRYPT_ROUNDS": "4", "AIMARKET_CHAIN_RPC_URL": s.chain_rpc_url,
            "AIMARKET_CHANNELS_ADDRESS": s.channels_address, "AIMARKET_TOKEN_ADDRESS": s.token_address,
            "AIMARKET_OPERATOR_KEY": s.operator_key_hex}


def test_workers_racing_with_random_kills_close_once_on_chain(hub: dict[str, Any]) -> None:
    rng = random.Random(int(os.environ.get("AIMARKET_SETTLE_SOAK_SEED", "7")))
    results = []
    for run in range(RUNS):
        result = race_once(hub, _env(hub), HUB_URL, rng, workers=2 + run % 2, no_lease=run % 2 == 1)
        results.append({"run": run, **result})
    report = os.environ.get("AIMARKET_SETTLE_SOAK_REPORT")
    if report:
        Path(report).write_text(json.dumps(results, indent=2))
    assert len(results) == RUNS


def _audit_chain(hub: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.cli", "audit", "verify", "--chain"], cwd=REPO, env=_env(hub),
                          capture_output=True, text=True, timeout=120, check=False)


def test_audit_verify_chain_names_a_channel_settled_behind_the_hubs_back(hub: dict[str, Any]) -> None:
    market, cc = hub["rt"].market, hub["chain_client"]
    channel, _parties = closed_channel(hub, HUB_URL)
    meta = Meta.system("test").as_dict()
    planned = market.settlement.request_settlement(meta, channel["id"])  # what a worker would send
    signature = bytes.fromhex(market.money.channel(channel["id"]).voucher_signature.removeprefix("0x"))
    tx = cc.build_and_send_settle(channel["chain_channel_id"], planned["cumulative_minor"], signature,
                                  [p["address"] for p in planned["payees"]],
                                  [p["amount_minor"] for p in planned["payees"]], planned["fee_minor"])
    cc.wait(tx)  # the operator key, outside any worker: the ledger still says closing
    catch_up(hub["rt"])
    planted = _audit_chain(hub)
    assert planted.returncode == 1, planted.stdout[-2000:] + planted.stderr[-2000:]
    report = json.loads(planted.stdout)
    assert report["chain"]["problems"] == [
        f"channel {channel['id']}: the contract settled it (tx {tx}) but the ledger says closing"]

    assert reconcile_channel(market, hub["rt"].settle_chain(), meta, channel["id"]) == "recorded"  # adopted
    check_settled_once(hub, channel)  # ... and verify_chain, what --chain runs, is clean again
