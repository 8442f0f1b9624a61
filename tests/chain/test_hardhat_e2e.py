"""End to end over JSON-RPC against a real `hardhat node` process on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domain.model.errors import SignatureInvalid
from domain.model.voucher import sign_voucher
from ops.adapters.evm import wallet
from ops.adapters.evm.deploy import contract
from ops.adapters.evm.evm import advance_time, http_chain
from tests.chain.conftest import BUYER_FUNDS, World, build_world

CID = "0x" + "e1" * 32
VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "eip712_voucher.json").read_text())


@pytest.fixture(scope="module")
def hh(hardhat_url: str) -> World:
    return build_world(http_chain(hardhat_url, poll_latency_s=0.01))


def test_deposit_settle_withdraw_over_http(hh: World) -> None:
    a, hub, chain = hh.actors, hh.hub, hh.chain
    assert chain.w3.eth.chain_id == 31337
    tx = wallet.open_channel(chain, a.buyer, hh.deployment.channels, CID, 3_000_000, hh.now() + 3600)
    hub.wait(tx)

    lower = hub.read_deposit(tx)
    upper = hub.read_deposit("0x" + tx[2:].upper())
    assert lower == upper and len(lower) == 1
    deposit = lower[0]
    assert (deposit.tx_hash, deposit.kind, deposit.amount, deposit.buyer) == (tx, "opened", 3_000_000, a.buyer.address)
    assert hub.confirmations(tx) >= 1

    forged = sign_voucher(a.stranger.key, hub.domain(), CID, 2_000_000)
    with pytest.raises(SignatureInvalid):  # ContractLogicError from the dry run, mapped
        hub.build_and_send_settle(CID, 2_000_000, forged, [a.seller1.address], [1_900_000], 100_000)

    sig = sign_voucher(a.buyer.key, hub.domain(), CID, 2_000_000)
    settle = hub.build_and_send_settle(
        CID, 2_000_000, sig, [a.seller1.address, a.seller2.address], [1_500_000, 400_000], 100_000
    )
    assert hub.wait(settle)["status"] == 1 and hub.receipt(settle) == 1
    assert hub.is_settled(CID)

    for who in (a.seller1, a.seller2, a.platform, a.buyer):
        hub.wait(hub.withdraw_for(who.address))
    assert hub.token_balance(a.seller1.address) == 1_500_000
    assert hub.token_balance(a.seller2.address) == 400_000
    assert hub.token_balance(a.platform.address) == 100_000
    assert hub.token_balance(a.buyer.address) == BUYER_FUNDS - 2_000_000
    assert hub.token_balance(hh.deployment.channels) == 0


def test_vectors_hold_on_hardhat(hh: World) -> None:
    assert hh.deployment.channels == VECTORS["domain"]["verifyingContract"]
    channels = contract(hh.chain.w3, "Channels", hh.deployment.channels).functions
    assert "0x" + channels.domain_separator().call().hex() == VECTORS["domainSeparator"]
    valid = next(c for c in VECTORS["cases"] if c["name"] == "valid_basic")
    recovered = channels.recover_voucher(
        bytes.fromhex(valid["channelId"][2:]), int(valid["cumulativeAmount"]), bytes.fromhex(valid["signature"][2:])
    ).call()
    assert recovered == VECTORS["signer"]


def test_time_moves_on_hardhat(hh: World) -> None:
    before = hh.now()
    assert advance_time(hh.chain, 60) >= before + 60
