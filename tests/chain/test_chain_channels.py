"""ChainChannels: reading deposits safely, receipts, confirmations, error mapping."""

from __future__ import annotations

import pytest

from domain.model.errors import InvalidInput, InvalidState, NotFound, Unavailable
from ops.adapters.evm import wallet
from ops.adapters.evm.channels import ChainChannels, normalize_tx_hash
from ops.adapters.evm.deploy import deploy_all
from ops.adapters.evm.evm import http_chain
from tests.chain.conftest import World

CID = "0x" + "d1" * 32


def _open(world: World, cid: str = CID, amount: int = 2_000_000) -> str:
    tx = wallet.open_channel(
        world.chain, world.actors.buyer, world.deployment.channels, cid, amount, world.now() + 3600
    )
    world.hub.wait(tx)
    return tx


def test_read_deposit_normalises_the_hash_to_one_deposit(world: World) -> None:
    tx = _open(world)
    variants = [tx, "0x" + tx[2:].upper(), "0X" + tx[2:].upper(), bytes.fromhex(tx[2:])]
    results = [world.hub.read_deposit(v) for v in variants]
    assert all(r == results[0] for r in results)
    (deposit,) = results[0]
    assert deposit.tx_hash == tx == tx.lower()
    assert (deposit.kind, deposit.channel_id, deposit.amount, deposit.fee_bps) == ("opened", CID, 2_000_000, 500)
    assert deposit.buyer == world.actors.buyer.address
    assert deposit.contract == world.deployment.channels
    # The identity a consumer stores: the same for every spelling of the hash.
    assert len({(d.contract, d.tx_hash, d.log_index) for r in results for d in r}) == 1


def test_top_up_deposit_carries_channel_fields(world: World) -> None:
    _open(world)
    tx = wallet.top_up(world.chain, world.actors.buyer, world.deployment.channels, CID, 500_000)
    world.hub.wait(tx)
    (deposit,) = world.hub.read_deposit(tx)
    assert (deposit.kind, deposit.amount, deposit.deposit_total) == ("topped_up", 500_000, 2_500_000)
    assert deposit.buyer == world.actors.buyer.address and deposit.fee_bps == 500
    found = world.hub.deposits_between(0, world.chain.w3.eth.block_number)
    assert [d.kind for d in found] == ["opened", "topped_up"]


def test_logs_of_another_channels_contract_are_ignored(world: World) -> None:
    a = world.actors
    twin = deploy_all(
        world.chain,
        a.deployer,
        operator=a.operator.address,
        fee_recipient=a.platform.address,
        token=world.deployment.token,
    )
    world.hub.wait(wallet.approve(world.chain, a.buyer, world.deployment.token, twin.channels, 10**9))
    tx = wallet.open_channel(world.chain, a.buyer, twin.channels, CID, 1_000_000, world.now() + 3600)
    world.hub.wait(tx)
    assert world.hub.read_deposit(tx) == []
    assert world.hub.deposits_between(0, world.chain.w3.eth.block_number) == []
    other = ChainChannels(world.chain, channels_address=twin.channels, token_address=world.deployment.token)
    assert len(other.read_deposit(tx)) == 1


def test_reverted_and_unknown_transactions(world: World) -> None:
    _open(world)
    # A mined but reverted open (duplicate id, dry run skipped) yields no deposit.
    tx = wallet.open_channel(
        world.chain, world.actors.buyer, world.deployment.channels, CID, 1, world.now() + 3600, simulate=False
    )
    assert world.hub.receipt(tx) == 0
    assert world.hub.read_deposit(tx) == []
    unknown = "0x" + "ee" * 32
    assert world.hub.receipt(unknown) is None
    assert world.hub.confirmations(unknown) == 0
    with pytest.raises(NotFound):
        world.hub.read_deposit(unknown)
    for bad in ["", "0x12", "ee" * 33, "0x" + "g" * 64, b"\x00" * 31]:
        with pytest.raises(InvalidInput):
            world.hub.read_deposit(bad)


def test_confirmations_grow_with_blocks(world: World) -> None:
    tx = _open(world)
    assert world.hub.confirmations(tx) == 1
    world.hub.wait(
        wallet.mint(world.chain, world.actors.deployer, world.deployment.token, world.actors.buyer.address, 1)
    )
    assert world.hub.confirmations(tx) == 2
    assert world.hub.receipt(tx) == 1


def test_sending_needs_an_operator_key(world: World) -> None:
    reader = ChainChannels(
        world.chain, channels_address=world.deployment.channels, token_address=world.deployment.token
    )
    with pytest.raises(InvalidState):
        reader.withdraw_for(world.actors.seller1.address)


def test_unreachable_node_is_unavailable() -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = ChainChannels(
        http_chain(f"http://127.0.0.1:{port}", request_timeout_s=1),
        channels_address="0x" + "11" * 20,
        token_address="0x" + "22" * 20,
    )
    with pytest.raises(Unavailable):
        hub.receipt("0x" + "ee" * 32)


def test_normalize_tx_hash() -> None:
    h = "0x" + "Ab" * 32
    assert normalize_tx_hash(h) == "0x" + "ab" * 32 == normalize_tx_hash("0X" + "AB" * 32)
