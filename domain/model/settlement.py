"""Settlement of an on-chain channel: intent first, then the transaction, then its outcome.

``Requested`` fixes what will be paid (the latest buyer-signed voucher, split per seller
wallet, the fee, the refund) before anything touches the chain. ``Submitted`` records a
locally signed raw transaction (its hash, nonce and gas) *before* it is broadcast, so a
worker killed at any point can find it again: it looks the hash up, and rebroadcasts the
very same bytes if the chain has never seen them. One nonce carries at most one
transaction, so at most one of our settle transactions for a channel can ever be mined;
``Failed(retryable)`` is recorded only once that nonce was consumed by something else
(the transaction can then never be mined), and only then may a new one be signed.
``Confirmed`` is saved in the same transaction as the channel's ``Settled``/``Refunded``.

The id is uuid5 of the channel id, so a retried request lands on the same settlement.
Pure: no I/O, clock or randomness inside event methods.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.errors import InvalidState
from domain.model.ledger import LedgerInvariantViolated
from domain.model.money import BPS_DENOMINATOR


def check_split(*, cumulative_minor: int, amounts: list[int], fee_minor: int, fee_bps: int, voucher_minor: int,
                deposit_minor: int) -> None:
    """The contract's rules, checked before we sign anything (a failure is a bug)."""
    if any(type(v) is not int or v < 0 for v in (cumulative_minor, fee_minor, *amounts)):
        raise LedgerInvariantViolated("settlement amounts must be non-negative integers")
    if sum(amounts) + fee_minor != cumulative_minor:
        raise LedgerInvariantViolated("payee amounts + fee must equal the settled cumulative amount")
    if fee_minor * BPS_DENOMINATOR > cumulative_minor * fee_bps:
        raise LedgerInvariantViolated("settlement fee above the channel's rate")
    if not cumulative_minor <= voucher_minor <= deposit_minor:
        raise LedgerInvariantViolated("settled <= latest voucher <= deposit broken")


class Settlement(MarketAggregate):
    """One channel's on-chain close: Requested -> Submitted* -> Confirmed | Failed."""

    @event("Requested")
    def __init__(
        self, id: UUID, meta: dict, channel_id: str, chain_channel_id: str, cumulative_minor: int,
        voucher_signature: str, seller_account_ids: list[str], payees: list[str], amounts: list[int],
        fee_minor: int, refund_minor: int, currency: str,
    ) -> None:
        self.channel_id = channel_id
        self.chain_channel_id = chain_channel_id
        self.cumulative_minor = cumulative_minor
        self.voucher_signature = voucher_signature
        self.seller_account_ids = seller_account_ids
        self.payees = payees
        self.amounts = amounts
        self.fee_minor = fee_minor
        self.refund_minor = refund_minor
        self.currency = currency
        self.status = "requested"  # -> submitted -> confirmed | failed
        self.submissions: list[dict[str, Any]] = []  # every signed tx, oldest first
        self.tx_hash = ""
        self.block_number = 0
        self.failure: dict[str, Any] | None = None

    @property
    def live(self) -> dict[str, Any] | None:
        """The submission that may still be mined (at most one at a time), if any."""
        if self.status == "submitted":
            return self.submissions[-1]
        return None

    @property
    def may_submit(self) -> bool:
        return self.status == "requested" or (self.status == "failed" and bool(self.failure and
                                                                               self.failure["retryable"]))

    def submit(self, meta: dict, *, tx_hash: str, nonce: int, raw_tx: str, gas: int) -> bool:
        """Record a signed transaction before it is broadcast; False if it was recorded already."""
        tx_hash = tx_hash.lower()
        if any(s["tx_hash"] == tx_hash for s in self.submissions):
            return False
        if not self.may_submit:
            # A second live transaction could close the channel twice in our books.
            raise InvalidState(f"settlement is {self.status}; no new transaction")
        self._submitted(meta=meta, tx_hash=tx_hash, nonce=nonce, raw_tx=raw_tx, gas=gas)
        return True

    @event("Submitted")
    def _submitted(self, meta: dict, tx_hash: str, nonce: int, raw_tx: str, gas: int) -> None:
        self.submissions.append({"tx_hash": tx_hash, "nonce": nonce, "raw_tx": raw_tx, "gas": gas})
        self.status = "submitted"
        self.failure = None

    def confirm(self, meta: dict, *, tx_hash: str, block_number: int) -> bool:
        """Record the mined, successful settle transaction; False if already confirmed."""
        tx_hash = tx_hash.lower()
        if self.status == "confirmed":
            if tx_hash != self.tx_hash:
                raise LedgerInvariantViolated(f"settlement {self.id} confirmed by two transactions")
            return False
        if not any(s["tx_hash"] == tx_hash for s in self.submissions):
            raise InvalidState(f"{tx_hash} is not a transaction of this settlement")
        self._confirmed(meta=meta, tx_hash=tx_hash, block_number=block_number)
        return True

    @event("Confirmed")
    def _confirmed(self, meta: dict, tx_hash: str, block_number: int) -> None:
        self.status = "confirmed"
        self.tx_hash = tx_hash
        self.block_number = block_number

    def fail(self, meta: dict, *, reason: str, retryable: bool) -> bool:
        """Record that the live transaction (or the attempt) cannot succeed; False if no change."""
        if self.status == "confirmed":
            raise InvalidState("settlement is confirmed; it cannot fail")
        if self.status == "failed" and self.failure == {"reason": reason[:300], "retryable": retryable}:
            return False
        self._failed(meta=meta, reason=reason[:300], retryable=retryable)
        return True

    @event("Failed")
    def _failed(self, meta: dict, reason: str, retryable: bool) -> None:
        self.status = "failed"
        self.failure = {"reason": reason, "retryable": retryable}

    def to_public(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "channel_id": self.channel_id, "chain_channel_id": self.chain_channel_id,
            "status": self.status, "cumulative_minor": self.cumulative_minor, "fee_minor": self.fee_minor,
            "refund_minor": self.refund_minor, "currency": self.currency,
            "payees": [{"seller_account_id": s, "address": p, "amount_minor": a}
                       for s, p, a in zip(self.seller_account_ids, self.payees, self.amounts, strict=True)],
            "tx_hash": self.tx_hash or None, "block_number": self.block_number or None,
            "submissions": [{"tx_hash": s["tx_hash"], "nonce": s["nonce"], "gas": s["gas"]} for s in self.submissions],
            "failure": self.failure,
        }
