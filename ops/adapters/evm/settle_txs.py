"""Settle transactions in two steps: sign (so the hash can be recorded), then broadcast.

``ChainChannels.build_and_send_settle`` signs and sends in one call, which leaves no
moment to record the transaction first. The settlement worker needs that moment: it
records the signed raw transaction and its hash, then broadcasts, and after a crash it
looks the hash up or rebroadcasts the very same bytes (same nonce: at most one can be mined).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils.exceptions import ValidationError
from web3 import Web3
from web3.exceptions import TimeExhausted, TransactionNotFound
from web3.logs import DISCARD

from domain.model.errors import InvalidState, MarketError, Unavailable
from domain.model.voucher import channel_id_bytes
from ops.adapters.evm.channels import SETTLE_GAS_BASE, SETTLE_GAS_PER_PAYEE, ChainChannels, normalize_tx_hash
from ops.adapters.evm.deploy import contract
from ops.adapters.evm.txs import call, fee_fields, mapped_errors, pending_nonce, to_hex


@dataclass(frozen=True, slots=True)
class SignedSettle:
    """A signed settle transaction not yet (or not known to be) broadcast."""

    tx_hash: str  # lower-case 0x-hex
    nonce: int
    raw_tx: str  # 0x-hex of the signed bytes
    gas: int


@dataclass(frozen=True, slots=True)
class Mined:
    status: int  # 1 success, 0 reverted
    block_number: int


class SettleClient:
    """The operator's settle transactions on one Channels deployment."""

    def __init__(self, hub: ChainChannels) -> None:
        if hub.operator is None:
            raise InvalidState("no operator key configured for settlement")
        self.hub = hub
        self.chain = hub.chain
        self.w3 = hub.chain.w3
        self.operator = hub.operator
        self._contract = contract(self.w3, "Channels", hub.channels_address)

    # -- reads ---------------------------------------------------------------------------------
    def now_s(self) -> int:
        """The chain's clock (the latest block's timestamp): what the contract compares with."""
        with mapped_errors():
            return int(self.w3.eth.get_block("latest")["timestamp"])

    def window_end_s(self, chain_channel_id: str) -> int:
        """The last second a settle may be mined: expiry + grace (the buyer may reclaim after)."""
        grace = int(call(self._contract.functions.SETTLE_GRACE()))
        return self.hub.channel(chain_channel_id).expiry + grace

    def status(self, chain_channel_id: str) -> str:
        return self.hub.channel(chain_channel_id).status

    def settled_record(self, chain_channel_id: str, known: Sequence[str] = (),
                       from_block: int = 0) -> dict[str, Any] | None:
        return read_settled(self.hub, chain_channel_id, known, from_block)

    def receipt(self, tx_hash: str) -> Mined | None:
        with mapped_errors():
            try:
                found = self.w3.eth.get_transaction_receipt(normalize_tx_hash(tx_hash))
            except TransactionNotFound:
                return None
        return Mined(int(found["status"]), int(found["blockNumber"]))

    def nonce_consumed(self, nonce: int) -> bool:
        """True once a mined transaction of the operator used ``nonce`` (ours or another)."""
        with mapped_errors():
            return int(self.w3.eth.get_transaction_count(self.operator.address, "latest")) > nonce

    def wait(self, tx_hash: str, timeout_s: float | None = None) -> Mined | None:
        """The receipt once mined, or None after ``timeout_s`` (the caller retries later)."""
        try:
            with mapped_errors():
                self.w3.eth.wait_for_transaction_receipt(
                    tx_hash, timeout=self.chain.receipt_timeout_s if timeout_s is None else timeout_s,
                    poll_latency=self.chain.poll_latency_s or 0.01)
        except TimeExhausted:
            return None
        return self.receipt(tx_hash)

    # -- writes --------------------------------------------------------------------------------
    def sign(self, *, chain_channel_id: str, cumulative_minor: int, signature_hex: str, payees: list[str],
             amounts: list[int], fee_minor: int) -> SignedSettle:
        """Dry-run the settle (a revert raises our error, no gas spent), then sign it locally.

        Explicit gas and fees, nonce = the operator's pending count. Nothing is sent.
        """
        fn = self._contract.functions.settle(
            channel_id_bytes(chain_channel_id), cumulative_minor, bytes.fromhex(signature_hex.removeprefix("0x")),
            payees, amounts, fee_minor)
        gas = SETTLE_GAS_BASE + SETTLE_GAS_PER_PAYEE * len(payees)
        with mapped_errors():
            fn.call({"from": self.operator.address})
            tx = fn.build_transaction({
                "from": self.operator.address, "gas": gas, "type": 2, "chainId": int(self.w3.eth.chain_id),
                "nonce": pending_nonce(self.w3, self.operator.address),
                **fee_fields(self.w3, self.hub.priority_fee_wei)})
        signed = self.operator.sign_transaction(tx)
        return SignedSettle(tx_hash=to_hex(signed.hash), nonce=int(tx["nonce"]),
                            raw_tx=to_hex(signed.raw_transaction), gas=gas)

    def broadcast(self, raw_tx: str) -> None:
        """Send the signed bytes. A node that already knows them (mined, pending, or its nonce
        used) answers with an error we ignore: the receipt, read next, decides."""
        raw = bytes.fromhex(raw_tx.removeprefix("0x"))
        try:
            with mapped_errors():
                self.w3.eth.send_raw_transaction(raw)
        except Unavailable as exc:
            text = str(exc).lower()
            if not any(word in text for word in ("nonce", "known", "underpriced")):
                raise  # the node is unreachable: retry later with the same bytes
        except (MarketError, ValidationError):
            pass  # reverted on send (hardhat automine mines it anyway) or nonce already used


def read_settled(hub: ChainChannels, chain_channel_id: str, known: Sequence[str] = (),
                 from_block: int = 0) -> dict[str, Any] | None:
    """How the contract settled a channel, from its own logs: the ``ChannelSettled`` log
    (the contract emits at most one per channel) and the ``PayeeCredited`` logs of the same
    transaction. None if the channel never settled. Reads only: no operator key needed.

    ``known``: transactions that may have settled it (ours, the ledger's reference): their
    receipts are read first; only if none did are the logs searched from ``from_block``
    (the deposit's block: a node scans every block in the range).
    """
    channels = contract(hub.chain.w3, "Channels", hub.channels_address)
    raw = channel_id_bytes(chain_channel_id)
    with mapped_errors():
        for tx_hash in known:
            try:
                receipt = hub.chain.w3.eth.get_transaction_receipt(normalize_tx_hash(tx_hash))
            except TransactionNotFound:
                continue
            found = _settled_in(channels, hub.channels_address, raw, receipt)
            if found is not None:
                return found
        logs = channels.events.ChannelSettled.get_logs(from_block=from_block, argument_filters={"channel_id": raw})
        for log in logs:
            if Web3.to_checksum_address(log["address"]) == hub.channels_address:
                return _settled_in(channels, hub.channels_address, raw,
                                   hub.chain.w3.eth.get_transaction_receipt(log["transactionHash"]))
    return None


def block_of(hub: ChainChannels, tx_hash: str) -> int:
    """The block a transaction was mined in; 0 if unknown (search from the genesis)."""
    found = hub._receipt(normalize_tx_hash(tx_hash))
    return 0 if found is None else int(found["blockNumber"])


def _settled_in(channels: Any, address: str, raw: bytes, receipt: Any) -> dict[str, Any] | None:
    """The channel's settle in one transaction's receipt, if it holds one."""
    def ours(event: Any) -> bool:
        return Web3.to_checksum_address(event["address"]) == address and bytes(event["args"]["channel_id"]) == raw

    settled = [e for e in channels.events.ChannelSettled().process_receipt(receipt, errors=DISCARD) if ours(e)]
    if not settled:
        return None
    credited = [e for e in channels.events.PayeeCredited().process_receipt(receipt, errors=DISCARD) if ours(e)]
    args = settled[0]["args"]
    return {"tx_hash": to_hex(receipt["transactionHash"]), "block_number": int(receipt["blockNumber"]),
            "cumulative_minor": int(args["cumulative_amount"]), "fee_minor": int(args["fee_amount"]),
            "refund_minor": int(args["refund_amount"]),
            "payees": [[str(e["args"]["payee"]).lower(), int(e["args"]["amount"])] for e in credited]}
