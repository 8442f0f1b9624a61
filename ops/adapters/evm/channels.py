"""The hub's view of one deployed Channels contract: read deposits, settle, push payouts.

Stateless by design: an instance holds only the connection and configuration, so any hub
process can build one per job. Idempotency lives in the caller's event store: a deposit is
identified by ``(channels contract, tx_hash, log_index)`` with ``tx_hash`` normalised to
lower-case 0x-hex, so the same transaction quoted in another letter case is one deposit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from eth_account.signers.local import LocalAccount
from eth_utils import event_abi_to_log_topic
from web3 import Web3
from web3.exceptions import TransactionNotFound

from domain.model.errors import InvalidInput, InvalidState, NotFound
from domain.model.voucher import VoucherDomain, channel_id_bytes
from ops.adapters.evm.deploy import contract
from ops.adapters.evm.evm import Chain
from ops.adapters.evm.txs import (
    DEFAULT_PRIORITY_FEE_WEI,
    call,
    fee_fields,
    mapped_errors,
    send_call,
    to_hex,
    wait_receipt,
)

MAX_PAYEES = 16
# Measured: ~75k + ~27k per new payee on prague; margins keep a cold payee slot safe.
SETTLE_GAS_BASE = 120_000
SETTLE_GAS_PER_PAYEE = 40_000
WITHDRAW_GAS = 100_000
_STATUS = {0: "none", 1: "open", 2: "settled", 3: "reclaimed"}


@dataclass(frozen=True, slots=True)
class Deposit:
    """One ChannelOpened / ChannelToppedUp log of our contract.

    ``amount`` is what this log added; ``deposit_total`` the channel's deposit after it.
    For a top-up, ``buyer``, ``expiry`` and ``fee_bps`` are the channel's (immutable once
    opened) values read from the contract.
    """

    tx_hash: str
    log_index: int
    channel_id: str
    buyer: str
    amount: int
    deposit_total: int
    expiry: int
    fee_bps: int
    kind: Literal["opened", "topped_up"]
    block_number: int
    contract: str


@dataclass(frozen=True, slots=True)
class ChannelState:
    """A channel as the contract holds it now."""

    channel_id: str
    buyer: str
    deposit: int
    expiry: int
    fee_bps: int
    status: Literal["none", "open", "settled", "reclaimed"]


def normalize_tx_hash(tx_hash: str | bytes) -> str:
    """Return ``tx_hash`` as lower-case ``0x`` + 64 hex digits.

    Raises:
        InvalidInput: not 32 bytes / 64 hex digits.
    """
    if isinstance(tx_hash, (bytes, bytearray)):
        if len(tx_hash) != 32:
            raise InvalidInput("tx_hash must be 32 bytes", param="tx_hash")
        return to_hex(bytes(tx_hash))
    if not isinstance(tx_hash, str) or len(tx_hash) != 66 or tx_hash[:2] not in ("0x", "0X"):
        raise InvalidInput("tx_hash must be 0x + 64 hex digits", param="tx_hash")
    digits = tx_hash[2:].lower()
    if any(c not in "0123456789abcdef" for c in digits):
        raise InvalidInput("tx_hash must be 0x + 64 hex digits", param="tx_hash")
    return "0x" + digits


def _address(value: str, param: str) -> str:
    if not isinstance(value, str) or not Web3.is_address(value):
        raise InvalidInput(f"{param} must be an address", param=param)
    return Web3.to_checksum_address(value)


class ChainChannels:
    """Client of one Channels deployment for the hub (settlement worker, deposit watcher).

    Args:
        chain: connection (see :mod:`ops.adapters.evm.evm`).
        channels_address: the Channels contract.
        token_address: the ERC-20 it holds.
        operator: the hub's operator account; needed only to send transactions.
        priority_fee_wei: EIP-1559 tip for our transactions.
    """

    def __init__(
        self,
        chain: Chain,
        *,
        channels_address: str,
        token_address: str,
        operator: LocalAccount | None = None,
        priority_fee_wei: int = DEFAULT_PRIORITY_FEE_WEI,
    ) -> None:
        self.chain = chain
        self.channels_address = _address(channels_address, "channels_address")
        self.token_address = _address(token_address, "token_address")
        self.operator = operator
        self.priority_fee_wei = priority_fee_wei
        self._contract = contract(chain.w3, "Channels", self.channels_address)
        self._token = contract(chain.w3, "TestToken", self.token_address)  # ERC-20 subset only
        opened = self._contract.events.ChannelOpened
        topped = self._contract.events.ChannelToppedUp
        self._topics = {
            event_abi_to_log_topic(opened.abi): ("opened", opened()),
            event_abi_to_log_topic(topped.abi): ("topped_up", topped()),
        }

    # ----------------------------------------------------------------- reads

    def domain(self) -> VoucherDomain:
        """The EIP-712 domain vouchers for this contract must use."""
        with mapped_errors():
            return VoucherDomain(int(self.chain.w3.eth.chain_id), self.channels_address)

    def _receipt(self, tx_hash: str) -> dict[str, Any] | None:
        with mapped_errors():
            try:
                return dict(self.chain.w3.eth.get_transaction_receipt(tx_hash))
            except TransactionNotFound:
                return None

    def receipt(self, tx_hash: str | bytes) -> int | None:
        """Receipt status (1 success, 0 reverted), or None when unknown or not yet mined."""
        found = self._receipt(normalize_tx_hash(tx_hash))
        return None if found is None else int(found["status"])

    def confirmations(self, tx_hash: str | bytes) -> int:
        """Blocks on top of (and including) the tx's block; 0 if unknown or not yet mined."""
        found = self._receipt(normalize_tx_hash(tx_hash))
        if found is None:
            return 0
        with mapped_errors():
            head = int(self.chain.w3.eth.block_number)
        return max(0, head - int(found["blockNumber"]) + 1)

    def read_deposit(self, tx_hash: str | bytes) -> list[Deposit]:
        """Deposits made by one transaction, from OUR contract's logs only.

        Returns an empty list for a reverted transaction or one touching no channel.

        Raises:
            InvalidInput: malformed hash.
            NotFound: unknown or not yet mined transaction (retry later).
        """
        normalized = normalize_tx_hash(tx_hash)
        found = self._receipt(normalized)
        if found is None:
            raise NotFound(f"transaction {normalized} not found or not yet mined", param="tx_hash")
        if int(found["status"]) != 1:
            return []
        return self._parse_logs(found["logs"])

    def deposits_between(self, from_block: int, to_block: int) -> list[Deposit]:
        """All deposits of our contract in blocks ``from_block..to_block`` (inclusive)."""
        if type(from_block) is not int or type(to_block) is not int or not 0 <= from_block <= to_block:
            raise InvalidInput("need 0 <= from_block <= to_block", param="from_block")
        with mapped_errors():
            logs = self.chain.w3.eth.get_logs(
                {
                    "address": self.channels_address,
                    "fromBlock": from_block,
                    "toBlock": to_block,
                    "topics": [list(self._topics)],
                }
            )
        return self._parse_logs(logs)

    def _parse_logs(self, logs: Sequence[Any]) -> list[Deposit]:
        deposits: list[Deposit] = []
        states: dict[str, ChannelState] = {}
        for log in logs:
            # Another contract can emit an identical-looking event: only ours counts.
            if Web3.to_checksum_address(log["address"]) != self.channels_address:
                continue
            if not log["topics"] or bytes(log["topics"][0]) not in self._topics:
                continue
            kind, event = self._topics[bytes(log["topics"][0])]
            args = event.process_log(log)["args"]
            channel_id = to_hex(args["channel_id"])
            common = {
                "tx_hash": to_hex(log["transactionHash"]),
                "log_index": int(log["logIndex"]),
                "channel_id": channel_id,
                "amount": int(args["amount"]),
                "kind": kind,
                "block_number": int(log["blockNumber"]),
                "contract": self.channels_address,
            }
            if kind == "opened":
                deposits.append(
                    Deposit(
                        buyer=Web3.to_checksum_address(args["buyer"]),
                        deposit_total=int(args["amount"]),
                        expiry=int(args["expiry"]),
                        fee_bps=int(args["fee_bps"]),
                        **common,
                    )
                )
            else:
                state = states.get(channel_id) or states.setdefault(channel_id, self.channel(channel_id))
                deposits.append(
                    Deposit(
                        buyer=state.buyer,
                        deposit_total=int(args["deposit_total"]),
                        expiry=state.expiry,
                        fee_bps=state.fee_bps,
                        **common,
                    )
                )
        return deposits

    def channel(self, channel_id: bytes | str) -> ChannelState:
        """The channel's on-chain state (status ``none`` if never opened)."""
        raw = channel_id_bytes(channel_id)
        buyer, deposit, expiry, fee_bps, status = call(self._contract.functions.channels(raw))
        return ChannelState(
            channel_id=to_hex(raw),
            buyer=Web3.to_checksum_address(buyer),
            deposit=int(deposit),
            expiry=int(expiry),
            fee_bps=int(fee_bps),
            status=_STATUS[int(status)],  # type: ignore[arg-type]
        )

    def is_settled(self, channel_id: bytes | str) -> bool:
        """True once the channel was settled (a reclaimed channel is not settled)."""
        return self.channel(channel_id).status == "settled"

    def withdrawable(self, address: str) -> int:
        """Credited but not yet withdrawn balance of ``address`` in the contract."""
        return int(call(self._contract.functions.withdrawable(_address(address, "address"))))

    def token_balance(self, address: str) -> int:
        """ERC-20 balance of ``address`` in minor units."""
        return int(call(self._token.functions.balanceOf(_address(address, "address"))))

    # ---------------------------------------------------------------- writes

    def _operator(self) -> LocalAccount:
        if self.operator is None:
            raise InvalidState("no operator key configured for sending transactions")
        return self.operator

    def build_and_send_settle(
        self,
        channel_id: bytes | str,
        cumulative_amount: int,
        signature: bytes,
        payees: Sequence[str],
        amounts: Sequence[int],
        fee_amount: int,
        *,
        nonce: int | None = None,
        simulate: bool = True,
    ) -> str:
        """Submit the buyer's latest voucher with the split; returns the tx hash (lower-case).

        Checks the split locally first. With ``simulate`` the call is dry-run so a revert
        maps to our error (SignatureInvalid, InvalidState, InvalidInput...) without gas.
        ``nonce`` defaults to the operator's ``pending`` transaction count.
        """
        raw_id = channel_id_bytes(channel_id)
        if len(payees) != len(amounts) or len(payees) > MAX_PAYEES:
            raise InvalidInput(f"need equal payees/amounts, at most {MAX_PAYEES}", param="payees")
        values = [cumulative_amount, fee_amount, *amounts]
        if any(type(v) is not int or v < 0 for v in values):
            raise InvalidInput("amounts must be non-negative integers", param="amounts")
        if sum(amounts) + fee_amount != cumulative_amount:
            raise InvalidInput("payee amounts + fee must equal the voucher amount", param="amounts")
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != 65:
            raise InvalidInput("signature must be 65 bytes", param="signature")
        fn = self._contract.functions.settle(
            raw_id,
            cumulative_amount,
            bytes(signature),
            [_address(p, "payees") for p in payees],
            list(amounts),
            fee_amount,
        )
        return send_call(
            self.chain,
            self._operator(),
            fn,
            gas=SETTLE_GAS_BASE + SETTLE_GAS_PER_PAYEE * len(payees),
            nonce=nonce,
            fees=self._fees(),
            simulate=simulate,
        )

    def withdraw_for(self, address: str, *, nonce: int | None = None) -> str:
        """Push ``address``'s credited balance to it (operator pays gas); returns the tx hash."""
        fn = self._contract.functions.withdraw_for(_address(address, "address"))
        return send_call(
            self.chain, self._operator(), fn, gas=WITHDRAW_GAS, nonce=nonce, fees=self._fees(), simulate=True
        )

    def wait(self, tx_hash: str | bytes, *, require_success: bool = True) -> dict[str, Any]:
        """Block until the transaction is mined; returns its receipt."""
        return wait_receipt(self.chain, normalize_tx_hash(tx_hash), require_success=require_success)

    def _fees(self) -> dict[str, int]:
        with mapped_errors():
            return fee_fields(self.chain.w3, self.priority_fee_wei)
