"""Seller payouts on the card rail: intent first (Requested), then Stripe, then Sent | Failed.

One ``SellerPayouts`` aggregate per (seller, currency) holds how much was ever requested,
so a payout never exceeds what the seller earned (the earned total comes from the ledger
and only grows). Each payout's id is the Stripe ``Idempotency-Key`` of its transfer: a
worker killed after the call and run again gets the same transfer, never a second one.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.errors import InvalidInput, InvalidState


class PayoutDestination(MarketAggregate):
    """A seller's Stripe Connect account (``acct_…``); id = uuid5 of the account id."""

    @event("Set")
    def __init__(self, id: UUID, meta: dict, account_id: str, stripe_account: str) -> None:
        self.account_id = account_id
        self.stripe_account = stripe_account

    def change(self, meta: dict, stripe_account: str) -> None:
        if stripe_account != self.stripe_account:
            self._changed(meta=meta, stripe_account=stripe_account)

    @event("Changed")
    def _changed(self, meta: dict, stripe_account: str) -> None:
        self.stripe_account = stripe_account


class SellerPayouts(MarketAggregate):
    """Every payout of one seller in one currency."""

    @event("Started")
    def __init__(self, id: UUID, meta: dict, seller_account_id: str, currency: str) -> None:
        self.seller_account_id = seller_account_id
        self.currency = currency
        self.requested_minor = 0  # sum of requested payouts that did not fail for good
        self.payouts: dict[str, dict[str, Any]] = {}

    def request(self, meta: dict, *, earned_minor: int, destination: str) -> str | None:
        """Request a payout of everything earned and not yet requested; its id, or None."""
        amount = earned_minor - self.requested_minor
        if amount <= 0:
            return None
        if not destination.startswith("acct_"):
            raise InvalidInput("payout destination must be a Stripe connected account", param="destination")
        payout_id = f"po_{self.id.hex[:16]}_{len(self.payouts) + 1}"
        self._requested(meta=meta, payout_id=payout_id, amount_minor=amount, destination=destination)
        return payout_id

    @event("PayoutRequested")
    def _requested(self, meta: dict, payout_id: str, amount_minor: int, destination: str) -> None:
        self.requested_minor += amount_minor
        self.payouts[payout_id] = {"payout_id": payout_id, "amount_minor": amount_minor, "destination": destination,
                                   "status": "requested", "transfer_id": None, "attempts": 0}

    def pending(self, payout_id: str) -> dict[str, Any]:
        payout = self.payouts.get(payout_id)
        if payout is None:
            raise InvalidState(f"no payout {payout_id}")
        return payout

    def mark_sent(self, meta: dict, payout_id: str, transfer_id: str) -> None:
        if self.pending(payout_id)["status"] == "requested":
            self._sent(meta=meta, payout_id=payout_id, transfer_id=transfer_id)

    @event("PayoutSent")
    def _sent(self, meta: dict, payout_id: str, transfer_id: str) -> None:
        self.payouts[payout_id].update(status="sent", transfer_id=transfer_id)

    def mark_failed(self, meta: dict, payout_id: str, reason: str, *, retryable: bool) -> None:
        if self.pending(payout_id)["status"] == "requested":
            self._failed(meta=meta, payout_id=payout_id, reason=reason[:300], retryable=retryable)

    @event("PayoutFailed")
    def _failed(self, meta: dict, payout_id: str, reason: str, retryable: bool) -> None:
        payout = self.payouts[payout_id]
        payout["attempts"] += 1
        if not retryable:
            # Given up: the amount is owed again and a later payout includes it.
            payout["status"] = "failed"
            self.requested_minor -= payout["amount_minor"]
