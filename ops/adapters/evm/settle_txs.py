"""Settle transactions in two steps: sign (so the hash can be recorded), then broadcast.

``ChainChannels.build_and_send_settle`` signs and sends in one call, which leaves no
moment to record the transaction first. The settlement worker needs that moment: it
records the signed raw transaction and its hash, then broadcasts, and after a crash it
looks the hash up or rebroadcasts the very same bytes (same nonce: at most one can be mined).
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils.exceptions import ValidationError
from web3.exceptions import TimeExhausted, TransactionNotFound

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

