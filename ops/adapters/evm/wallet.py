"""Buyer- and token-owner-side transactions (the hub never signs these).

Used by tests and by the embedded deployment, where the buyer's wallet is local. Each
function signs locally with explicit gas and returns the lower-case transaction hash; pass
``nonce`` to pipeline several transactions without waiting. Channel actions dry-run first
(``simulate``) so a revert raises our error instead of burning gas.
"""

from __future__ import annotations

from eth_account.signers.local import LocalAccount
from web3 import Web3

from domain.model.voucher import channel_id_bytes
from ops.adapters.evm.deploy import contract
from ops.adapters.evm.evm import Chain
from ops.adapters.evm.txs import send_call

GAS = {
    "mint": 100_000,
    "approve": 60_000,
    "open": 260_000,
    "top_up": 100_000,
    "reclaim": 100_000,
    "withdraw": 100_000,
    "set_blocked": 60_000,
}


def mint(chain: Chain, owner: LocalAccount, token: str, to: str, amount: int, *, nonce: int | None = None) -> str:
    """TestToken only: the owner mints ``amount`` minor units to ``to``."""
    fn = contract(chain.w3, "TestToken", token).functions.mint(Web3.to_checksum_address(to), amount)
    return send_call(chain, owner, fn, gas=GAS["mint"], nonce=nonce)


def set_blocked(
    chain: Chain, owner: LocalAccount, token: str, account: str, blocked: bool, *, nonce: int | None = None
) -> str:
    """TestToken only: freeze/unfreeze ``account`` like a regulated stablecoin would."""
    fn = contract(chain.w3, "TestToken", token).functions.set_blocked(Web3.to_checksum_address(account), blocked)
    return send_call(chain, owner, fn, gas=GAS["set_blocked"], nonce=nonce)


def approve(
    chain: Chain, holder: LocalAccount, token: str, spender: str, amount: int, *, nonce: int | None = None
) -> str:
    """ERC-20 approve of ``spender`` (the Channels contract) for ``amount``."""
    fn = contract(chain.w3, "TestToken", token).functions.approve(Web3.to_checksum_address(spender), amount)
    return send_call(chain, holder, fn, gas=GAS["approve"], nonce=nonce)


def open_channel(
    chain: Chain,
    buyer: LocalAccount,
    channels: str,
    channel_id: bytes | str,
    amount: int,
    expiry: int,
    *,
    nonce: int | None = None,
    simulate: bool = True,
) -> str:
    """Open a channel funded by ``buyer`` (needs a prior approve of at least ``amount``)."""
    fn = contract(chain.w3, "Channels", channels).functions.open(channel_id_bytes(channel_id), amount, expiry)
    return send_call(chain, buyer, fn, gas=GAS["open"], nonce=nonce, simulate=simulate)


def top_up(
    chain: Chain,
    buyer: LocalAccount,
    channels: str,
    channel_id: bytes | str,
    amount: int,
    *,
    nonce: int | None = None,
    simulate: bool = True,
) -> str:
    """Add ``amount`` to an open channel's deposit (needs a prior approve)."""
    fn = contract(chain.w3, "Channels", channels).functions.top_up(channel_id_bytes(channel_id), amount)
    return send_call(chain, buyer, fn, gas=GAS["top_up"], nonce=nonce, simulate=simulate)


def reclaim(
    chain: Chain, buyer: LocalAccount, channels: str, channel_id: bytes | str, *, nonce: int | None = None
) -> str:
    """Buyer takes back an unsettled deposit after expiry + grace (credited, then withdraw)."""
    fn = contract(chain.w3, "Channels", channels).functions.reclaim(channel_id_bytes(channel_id))
    return send_call(chain, buyer, fn, gas=GAS["reclaim"], nonce=nonce, simulate=True)


def withdraw(chain: Chain, account: LocalAccount, channels: str, *, nonce: int | None = None) -> str:
    """Withdraw ``account``'s credited balance to itself."""
    fn = contract(chain.w3, "Channels", channels).functions.withdraw()
    return send_call(chain, account, fn, gas=GAS["withdraw"], nonce=nonce)
