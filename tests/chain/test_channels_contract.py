"""Channels.vy behaviour on the in-process EVM, through the hub adapter and raw calls."""

from __future__ import annotations

import pytest
from eth_tester.exceptions import TransactionFailed

from domain.model.errors import (
    AlreadyExists,
    Forbidden,
    InvalidInput,
    InvalidState,
    SignatureInvalid,
)
from domain.model.voucher import sign_voucher
from ops.adapters.evm import wallet
from ops.adapters.evm.deploy import contract
from ops.adapters.evm.evm import advance_time
from ops.adapters.evm.txs import send_call
from tests.chain.conftest import BUYER_FUNDS, World

CID = "0x" + "c1" * 32
DEPOSIT = 5_000_000
TOP_UP = 1_000_000
HOUR = 3600
GRACE = 24 * HOUR


def open_channel(world: World, cid: str = CID, amount: int = DEPOSIT, expiry_in_s: int = HOUR) -> int:
    expiry = world.now() + expiry_in_s
    tx = wallet.open_channel(world.chain, world.actors.buyer, world.deployment.channels, cid, amount, expiry)
    world.hub.wait(tx)
    return expiry


def voucher(world: World, amount: int, cid: str = CID, key: bytes | None = None) -> bytes:
    signer = key if key is not None else world.actors.buyer.key
    return sign_voucher(signer, world.hub.domain(), cid, amount)


def settle(world: World, amount: int, split: list[int], fee: int, sig: bytes | None = None, cid: str = CID) -> str:
    a = world.actors
    payees = [a.seller1.address, a.seller2.address][: len(split)]
    tx = world.hub.build_and_send_settle(cid, amount, sig or voucher(world, amount, cid), payees, split, fee)
    world.hub.wait(tx)
    return tx


def raw_settle_reverts(world: World, args: list, sender: str | None = None) -> str:
    """Dry-run settle straight against the contract (bypassing the adapter's own checks)."""
    fn = contract(world.chain.w3, "Channels", world.deployment.channels).functions.settle(*args)
    with pytest.raises(TransactionFailed) as info:
        fn.call({"from": sender or world.actors.operator.address})
    return str(info.value)


def test_open_top_up_settle_pays_everyone_exactly(world: World) -> None:
    a, hub = world.actors, world.hub
    open_channel(world)
    hub.wait(wallet.top_up(world.chain, a.buyer, world.deployment.channels, CID, TOP_UP))
    state = hub.channel(CID)
    assert (state.deposit, state.fee_bps, state.status, state.buyer) == (6_000_000, 500, "open", a.buyer.address)

    # 1.000003 spent: 0.600000 + 0.350003 to sellers, fee 5% of each debit rounded down.
    settle(world, 1_000_003, [600_000, 350_003], 50_000)
    assert hub.is_settled(CID)
    assert hub.withdrawable(a.buyer.address) == 6_000_000 - 1_000_003

    hub.wait(hub.withdraw_for(a.seller1.address))
    hub.wait(hub.withdraw_for(a.seller2.address))
    hub.wait(hub.withdraw_for(a.platform.address))
    hub.wait(wallet.withdraw(world.chain, a.buyer, world.deployment.channels))
    assert hub.token_balance(a.seller1.address) == 600_000
    assert hub.token_balance(a.seller2.address) == 350_003
    assert hub.token_balance(a.platform.address) == 50_000
    assert hub.token_balance(a.buyer.address) == BUYER_FUNDS - 1_000_003
    assert hub.token_balance(world.deployment.channels) == 0
    assert hub.withdrawable(a.seller1.address) == 0


def test_forged_voucher_is_rejected(world: World) -> None:
    open_channel(world)
    forged = bytearray(voucher(world, 1_000_000))
    forged[5] ^= 0xFF
    with pytest.raises(SignatureInvalid):
        settle(world, 1_000_000, [950_000], 50_000, sig=bytes(forged))


def test_voucher_from_another_key_is_rejected(world: World) -> None:
    open_channel(world)
    sig = voucher(world, 1_000_000, key=world.actors.stranger.key)
    with pytest.raises(SignatureInvalid):
        settle(world, 1_000_000, [950_000], 50_000, sig=sig)


def test_voucher_for_another_channel_is_rejected(world: World) -> None:
    open_channel(world)
    sig = voucher(world, 1_000_000, cid="0x" + "c2" * 32)
    with pytest.raises(SignatureInvalid):
        settle(world, 1_000_000, [950_000], 50_000, sig=sig)


def test_cumulative_above_deposit_is_rejected(world: World) -> None:
    open_channel(world)
    amount = DEPOSIT + 1
    with pytest.raises(InvalidInput) as info:
        settle(world, amount, [amount - 250_000], 250_000)
    assert info.value.extra["revert_reason"] == "above deposit"


def test_fee_above_snapshotted_rate_is_rejected(world: World) -> None:
    open_channel(world)
    with pytest.raises(InvalidInput) as info:
        settle(world, 1_000_000, [949_999], 50_001)
    assert info.value.extra["revert_reason"] == "fee above rate"


def test_fee_change_applies_to_new_channels_only(world: World) -> None:
    a, hub = world.actors, world.hub
    open_channel(world)
    channels = contract(world.chain.w3, "Channels", world.deployment.channels)
    hub.wait(send_call(world.chain, a.operator, channels.functions.set_fee_bps(800), gas=80_000))
    with pytest.raises(Forbidden):
        send_call(world.chain, a.stranger, channels.functions.set_fee_bps(0), gas=80_000, simulate=True)
    with pytest.raises(InvalidInput):
        send_call(world.chain, a.operator, channels.functions.set_fee_bps(1001), gas=80_000, simulate=True)
    cid2 = "0x" + "c2" * 32
    open_channel(world, cid=cid2, amount=1_000_000)
    assert (hub.channel(CID).fee_bps, hub.channel(cid2).fee_bps) == (500, 800)
    with pytest.raises(InvalidInput):  # 8% on the old channel: above its 5% snapshot
        settle(world, 1_000_000, [920_000], 80_000)
    settle(world, 1_000_000, [920_000], 80_000, cid=cid2)
    assert hub.withdrawable(a.platform.address) == 80_000


def test_sum_and_length_mismatch_are_rejected(world: World) -> None:
    a = world.actors
    open_channel(world)
    sig = voucher(world, 1_000_000)
    with pytest.raises(InvalidInput):  # the adapter refuses before spending gas
        settle(world, 1_000_000, [900_000], 50_000, sig=sig)
    # ...and the contract refuses on its own.
    reason = raw_settle_reverts(world, [bytes.fromhex(CID[2:]), 1_000_000, sig, [a.seller1.address], [900_000], 50_000])
    assert "sum mismatch" in reason
    reason = raw_settle_reverts(
        world, [bytes.fromhex(CID[2:]), 1_000_000, sig, [a.seller1.address], [900_000, 50_000], 50_000]
    )
    assert "length mismatch" in reason


def test_only_the_operator_settles(world: World) -> None:
    a = world.actors
    open_channel(world)
    sig = voucher(world, 100_000)
    args = [bytes.fromhex(CID[2:]), 100_000, sig, [a.seller1.address], [95_000], 5_000]
    for sender in (a.buyer, a.seller1, a.stranger):
        assert "not operator" in raw_settle_reverts(world, args, sender=sender.address)


def test_double_settle_is_rejected(world: World) -> None:
    open_channel(world)
    settle(world, 1_000_000, [950_000], 50_000)
    with pytest.raises(InvalidState):
        settle(world, 2_000_000, [1_900_000], 100_000)
    with pytest.raises(InvalidState):
        wallet.top_up(world.chain, world.actors.buyer, world.deployment.channels, CID, 1)


def test_settle_within_grace_but_not_after(world: World) -> None:
    open_channel(world, expiry_in_s=HOUR)
    cid2 = "0x" + "c2" * 32
    open_channel(world, cid=cid2, amount=1_000_000, expiry_in_s=HOUR)
    advance_time(world.chain, HOUR + GRACE - 600)  # expired, still inside the grace window
    settle(world, 1_000_000, [950_000], 50_000)
    advance_time(world.chain, 1200)  # past expiry + grace
    with pytest.raises(InvalidState) as info:
        settle(world, 1_000_000, [950_000], 50_000, cid=cid2)
    assert info.value.extra["revert_reason"] == "settle window closed"


def test_reclaim_only_after_window_and_only_by_buyer(world: World) -> None:
    a, hub = world.actors, world.hub
    open_channel(world, expiry_in_s=HOUR)
    with pytest.raises(InvalidState):
        wallet.reclaim(world.chain, a.buyer, world.deployment.channels, CID)
    advance_time(world.chain, HOUR + GRACE - 600)
    with pytest.raises(InvalidState):  # expired but the hub may still settle
        wallet.reclaim(world.chain, a.buyer, world.deployment.channels, CID)
    advance_time(world.chain, 1200)
    with pytest.raises(Forbidden):
        wallet.reclaim(world.chain, a.stranger, world.deployment.channels, CID)
    hub.wait(wallet.reclaim(world.chain, a.buyer, world.deployment.channels, CID))
    assert hub.channel(CID).status == "reclaimed"
    assert not hub.is_settled(CID)
    with pytest.raises(InvalidState):
        wallet.reclaim(world.chain, a.buyer, world.deployment.channels, CID)
    hub.wait(wallet.withdraw(world.chain, a.buyer, world.deployment.channels))
    assert hub.token_balance(a.buyer.address) == BUYER_FUNDS


def test_settled_channel_cannot_be_reclaimed(world: World) -> None:
    open_channel(world, expiry_in_s=HOUR)
    settle(world, 1_000_000, [950_000], 50_000)
    advance_time(world.chain, HOUR + GRACE + 600)
    with pytest.raises(InvalidState):
        wallet.reclaim(world.chain, world.actors.buyer, world.deployment.channels, CID)


def test_open_rules(world: World) -> None:
    a = world.actors
    open_channel(world)
    with pytest.raises(AlreadyExists):
        wallet.open_channel(world.chain, a.buyer, world.deployment.channels, CID, 1, world.now() + HOUR, simulate=True)
    with pytest.raises(InvalidInput):
        wallet.open_channel(
            world.chain, a.buyer, world.deployment.channels, "0x" + "c3" * 32, 1, world.now() - 1, simulate=True
        )
    with pytest.raises(Forbidden):
        wallet.top_up(world.chain, a.stranger, world.deployment.channels, CID, 1)


def test_blocked_payee_cannot_stall_settlement(world: World) -> None:
    a, hub = world.actors, world.hub
    open_channel(world)
    hub.wait(wallet.set_blocked(world.chain, a.deployer, world.deployment.token, a.seller2.address, True))
    settle(world, 1_000_000, [600_000, 350_000], 50_000)  # pull payments: settles anyway
    with pytest.raises(Forbidden):
        hub.withdraw_for(a.seller2.address)
    hub.wait(hub.withdraw_for(a.seller1.address))
    assert hub.token_balance(a.seller1.address) == 600_000
    assert hub.withdrawable(a.seller2.address) == 350_000  # kept until the token unblocks it
