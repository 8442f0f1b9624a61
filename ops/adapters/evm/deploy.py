"""Deploy the test token and the Channels contract from the committed artifacts.

Transactions are signed locally with explicit gas; the deployer's nonce is read once
(``pending``) and then tracked locally for the few transactions of one deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from domain.model.errors import InvalidInput
from ops.adapters.evm.compile import load_artifact
from ops.adapters.evm.evm import Chain
from ops.adapters.evm.txs import fee_fields, mapped_errors, pending_nonce, send_signed, wait_receipt

# Measured deployment gas (prague, vyper 0.4.3 -Ogas): TestToken ~0.6M, Channels ~1.5M.
DEPLOY_GAS = {"TestToken": 1_500_000, "Channels": 2_500_000}
DEFAULT_FEE_BPS = 500
DEFAULT_SETTLE_GRACE_S = 24 * 3600
MAX_FEE_BPS = 1000
TEST_ERC20_NAME = "Test USD"
TEST_ERC20_SYMBOL = "TUSD"  # listed in domain.model.money.SCALES with 6 decimals


@dataclass(frozen=True, slots=True)
class Deployment:
    """Addresses and parameters of one deployment (all addresses checksummed)."""

    chain_id: int
    token: str
    channels: str
    operator: str
    fee_recipient: str
    fee_bps: int
    settle_grace_s: int
    block_number: int


def contract(w3: Web3, name: str, address: str | None = None) -> Any:
    """A web3 contract object for artifact ``name`` (at ``address`` if given)."""
    artifact = load_artifact(name)
    if address is None:
        return w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact["abi"])


def _deploy(
    chain: Chain, deployer: LocalAccount, name: str, args: list[Any], nonce: int, fees: dict[str, int]
) -> tuple[str, int]:
    factory = contract(chain.w3, name)
    with mapped_errors():
        tx = factory.constructor(*args).build_transaction(
            {
                "from": deployer.address,
                "gas": DEPLOY_GAS[name],
                "nonce": nonce,
                "chainId": chain.w3.eth.chain_id,
                "type": 2,
                **fees,
            }
        )
    receipt = wait_receipt(chain, send_signed(chain, deployer, tx))
    return Web3.to_checksum_address(receipt["contractAddress"]), int(receipt["blockNumber"])


def deploy_all(
    chain: Chain,
    deployer: LocalAccount,
    *,
    operator: str,
    fee_recipient: str,
    fee_bps: int = DEFAULT_FEE_BPS,
    settle_grace_s: int = DEFAULT_SETTLE_GRACE_S,
    token: str | None = None,
    erc20_name: str = TEST_ERC20_NAME,
    erc20_symbol: str = TEST_ERC20_SYMBOL,
) -> Deployment:
    """Deploy TestToken (unless ``token`` is given: a real stablecoin) and Channels.

    Raises:
        InvalidInput: fee_bps out of 0..1000 or a negative grace.
    """
    if type(fee_bps) is not int or not 0 <= fee_bps <= MAX_FEE_BPS:
        raise InvalidInput(f"fee_bps must be within 0..{MAX_FEE_BPS}", param="fee_bps")
    if type(settle_grace_s) is not int or settle_grace_s < 0:
        raise InvalidInput("settle_grace_s must be a non-negative integer", param="settle_grace_s")
    w3 = chain.w3
    with mapped_errors():
        nonce = pending_nonce(w3, deployer.address)
        fees = fee_fields(w3)
    if token is None:
        token, _ = _deploy(chain, deployer, "TestToken", [erc20_name, erc20_symbol], nonce, fees)
        nonce += 1
    args = [
        Web3.to_checksum_address(token),
        Web3.to_checksum_address(operator),
        Web3.to_checksum_address(fee_recipient),
        fee_bps,
        settle_grace_s,
    ]
    channels, block_number = _deploy(chain, deployer, "Channels", args, nonce, fees)
    return Deployment(
        chain_id=int(w3.eth.chain_id),
        token=Web3.to_checksum_address(token),
        channels=channels,
        operator=Web3.to_checksum_address(operator),
        fee_recipient=Web3.to_checksum_address(fee_recipient),
        fee_bps=fee_bps,
        settle_grace_s=settle_grace_s,
        block_number=block_number,
    )
