"""Locally signed transactions with explicit gas, and revert -> domain error mapping.

Gas estimation costs a round trip and made settlement ~4x slower (PEERS.md): every
transaction here carries explicit gas and EIP-1559 fees and is signed locally.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractLogicError, ProviderConnectionError, Web3RPCError

from domain.model.errors import (
    AlreadyExists,
    Forbidden,
    InvalidInput,
    InvalidState,
    MarketError,
    SignatureInvalid,
    Unavailable,
)
from ops.adapters.evm.evm import Chain

DEFAULT_PRIORITY_FEE_WEI = 1_000_000_000  # 1 gwei; Base needs far less, set it per deployment

# Revert reasons of Channels.vy / TestToken.vy -> our errors. Anything else is InvalidState.
_REVERTS: dict[str, type[MarketError]] = {
    "not operator": Forbidden,
    "not buyer": Forbidden,
    "not owner": Forbidden,
    "bad signature": SignatureInvalid,
    "channel exists": AlreadyExists,
    "channel not open": InvalidState,
    "expired": InvalidState,
    "settle window closed": InvalidState,
    "settle window open": InvalidState,
    "above deposit": InvalidInput,
    "fee above rate": InvalidInput,
    "sum mismatch": InvalidInput,
    "length mismatch": InvalidInput,
    "zero payee": InvalidInput,
    "zero amount": InvalidInput,
    "zero id": InvalidInput,
    "bad expiry": InvalidInput,
    "fee too high": InvalidInput,
    "transfer failed": InvalidState,
    "sender blocked": Forbidden,
    "receiver blocked": Forbidden,
}
_REASON = re.compile("|".join(sorted((re.escape(r) for r in _REVERTS), key=len, reverse=True)))


def revert_error(message: str) -> MarketError:
    """Build the domain error for a revert message from any backend."""
    found = _REASON.search(message or "")
    reason = found.group(0) if found else ""
    cls = _REVERTS.get(reason, InvalidState)
    detail = f"chain rejected the transaction: {reason or 'reverted without reason'}"
    return cls(detail, revert_reason=reason or None)


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Turn reverts (in process or over HTTP) and lost connections into domain errors."""
    from eth_tester.exceptions import TransactionFailed

    try:
        yield
    except TransactionFailed as exc:
        raise revert_error(str(exc)) from exc
    except ContractLogicError as exc:
        raise revert_error(str(exc.message or exc)) from exc
    except Web3RPCError as exc:
        text = str(exc)
        if "revert" in text.lower():  # hardhat answers a mined-but-reverted send with an RPC error
            raise revert_error(text) from exc
        raise Unavailable(f"chain RPC error: {text}") from exc
    except (ProviderConnectionError, ConnectionError, TimeoutError, OSError) as exc:
        raise Unavailable(f"chain unreachable: {exc}") from exc


def fee_fields(w3: Web3, priority_fee_wei: int = DEFAULT_PRIORITY_FEE_WEI) -> dict[str, int]:
    """EIP-1559 fee caps: twice the latest base fee plus the tip (survives 6 full blocks)."""
    base_fee = int(w3.eth.get_block("latest").get("baseFeePerGas", 0))
    return {
        "maxFeePerGas": 2 * base_fee + priority_fee_wei,
        "maxPriorityFeePerGas": priority_fee_wei,
    }


def pending_nonce(w3: Web3, address: str) -> int:
    """The next nonce for ``address`` counting its pending transactions."""
    return int(w3.eth.get_transaction_count(Web3.to_checksum_address(address), "pending"))


def to_hex(value: bytes) -> str:
    """Lower-case 0x-hex of bytes."""
    return "0x" + bytes(value).hex()


def send_call(
    chain: Chain,
    account: LocalAccount,
    fn: Any,
    *,
    gas: int,
    nonce: int | None = None,
    chain_id: int | None = None,
    fees: dict[str, int] | None = None,
    simulate: bool = False,
) -> str:
    """Sign ``fn`` (a bound contract function) as ``account`` and send it raw.

    Args:
        simulate: run ``eth_call`` first so a revert surfaces as our error without
            spending gas on a failing transaction.

    Returns:
        The transaction hash, lower-case 0x-hex.
    """
    w3 = chain.w3
    with mapped_errors():
        if simulate:
            fn.call({"from": account.address})
        tx = fn.build_transaction(
            {
                "from": account.address,
                "gas": gas,
                "nonce": pending_nonce(w3, account.address) if nonce is None else nonce,
                "chainId": w3.eth.chain_id if chain_id is None else chain_id,
                "type": 2,
                **(fees if fees is not None else fee_fields(w3)),
            }
        )
        return send_signed(chain, account, tx)


def send_signed(chain: Chain, account: LocalAccount, tx: dict[str, Any]) -> str:
    """Sign a complete transaction dict and send it; returns the lower-case hash."""
    signed = account.sign_transaction(tx)
    with mapped_errors():
        try:
            tx_hash = chain.w3.eth.send_raw_transaction(signed.raw_transaction)
        except Web3RPCError as exc:
            # hardhat automine mines a reverting tx and reports the revert on send.
            if "revert" in str(exc).lower():
                raise revert_error(str(exc)) from exc
            raise
    return to_hex(tx_hash)


def wait_receipt(chain: Chain, tx_hash: str, *, require_success: bool = True) -> dict[str, Any]:
    """Wait for a receipt; with ``require_success`` a status-0 receipt raises InvalidState."""
    with mapped_errors():
        receipt = chain.w3.eth.wait_for_transaction_receipt(
            tx_hash, timeout=chain.receipt_timeout_s, poll_latency=chain.poll_latency_s
        )
    if require_success and receipt["status"] != 1:
        raise InvalidState(f"transaction {tx_hash} reverted", tx_hash=tx_hash)
    return dict(receipt)


def call(fn: Any, **kwargs: Any) -> Any:
    """``fn.call()`` with errors mapped."""
    with mapped_errors():
        return fn.call(**kwargs)
