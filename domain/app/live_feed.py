"""Recent transactions read from the log, for the live stream (``GET /v1/stats/live``).

Stateless: a reader is a position in the log. ``poll(after)`` reads the transaction events
recorded after ``after`` up to the log's head (at most ``POLL_EVENTS_MAX``) and returns those
the caller may see, each as ``(position, kind, fields)``, and the position to poll from next
(the head when the batch reached it: positions are handed out in commit order, so nothing
commits below it later; ``docs/architecture.md``, "Projections").

Kinds: purchases, deliveries, debits, settlements, payouts, compute invocations captured.
What an event says: ids, amounts, currencies and times (``STREAMED``), never a payload, a
delivery token, a signature, an idempotency key or a debit's purpose (free text of the buyer).
Who sees it: an auditor or admin every event; any other account the events of transactions it
is a party to (buyer or seller of the purchase or invocation, buyer of the channel or seller it
pays, seller of the payout). Parties are read from the aggregates, once per aggregate and reader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.utils import get_topic

from domain.model.channel import Channel
from domain.model.invocation import Invocation
from domain.model.payout import SellerPayouts
from domain.model.purchase import Purchase

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace

POLL_EVENTS_MAX = 200
PARTIES_CACHE_MAX = 4096
EVERYONE_ROLES = frozenset({"auditor", "admin"})


def _purchased(e: Any) -> dict[str, Any]:
    return {"purchase_id": str(e.originator_id), "listing_id": e.listing_id, "price_minor": e.price_minor,
            "fee_minor": e.fee_minor, "currency": e.currency, "buyer_account_id": e.buyer_account_id,
            "seller_account_id": e.seller_account_id}


def _delivered(e: Any) -> dict[str, Any]:
    return {"purchase_id": str(e.originator_id), "delivered_at_ms": e.delivered_at_ms}


def _debited(e: Any) -> dict[str, Any]:
    return {"channel_id": str(e.originator_id), "amount_minor": e.amount_minor, "fee_minor": e.fee_minor,
            "seller_account_id": e.seller_account_id}


def _settled(e: Any) -> dict[str, Any]:
    return {"channel_id": str(e.originator_id), "cumulative_minor": e.cumulative_minor, "fee_minor": e.fee_minor,
            "refund_minor": e.refund_minor, "seller_amounts": dict(e.seller_amounts)}


def _payout(e: Any) -> dict[str, Any]:
    return {"payout_id": e.payout_id}


def _captured(e: Any) -> dict[str, Any]:
    return {"invocation_id": str(e.originator_id), "captured_minor": e.captured_minor, "fee_minor": e.fee_minor,
            "released_minor": e.released_minor, "cumulative_units": e.cumulative_units}


# kind -> (event class, its fields); the topics are what the store filters on.
STREAMED: dict[str, tuple[type, Callable[[Any], dict[str, Any]]]] = {
    "purchase": (Purchase.Purchased, _purchased),  # type: ignore[attr-defined]
    "delivery": (Purchase.Delivered, _delivered),  # type: ignore[attr-defined]
    "debit": (Channel.Debited, _debited),
    "settlement": (Channel.Settled, _settled),  # type: ignore[attr-defined]
    "payout": (SellerPayouts.PayoutSent, _payout),  # type: ignore[attr-defined]
    "invocation": (Invocation.Captured, _captured),  # type: ignore[attr-defined]
}
TOPICS = {get_topic(cls): (kind, fields) for kind, (cls, fields) in STREAMED.items()}


class LiveFeed:
    """One reader of the recent transactions, for one account (its visibility: module docstring)."""

    def __init__(self, market: Marketplace, account_id: str, roles: Sequence[str]) -> None:
        self.market = market
        self.account_id = account_id
        self.everyone = bool(EVERYONE_ROLES & set(roles))
        self._parties: dict[UUID, frozenset[str]] = {}
        self._currencies: dict[UUID, str] = {}

    def head(self) -> int:
        return self.market.recorder.max_notification_id() or 0

    def poll(self, after: int) -> tuple[list[tuple[int, str, dict[str, Any]]], int]:
        """The visible transaction events after ``after``, and the position to poll from next."""
        head = self.head()
        if head <= after:
            return [], after
        batch = self.market.recorder.select_notifications(start=after + 1, limit=POLL_EVENTS_MAX, stop=head,
                                                          topics=list(TOPICS))
        found: list[tuple[int, str, dict[str, Any]]] = []
        for notification in batch:
            kind, fields = TOPICS[notification.topic]
            event = self.market.mapper.to_domain_event(notification)
            if self.everyone or self.account_id in self._parties_of(kind, event):
                item = fields(event)
                if kind in ("debit", "invocation"):
                    item["currency"] = self._currency(kind, event)
                elif kind == "payout":  # rare: read fresh for its amount
                    payouts = self.market.load(SellerPayouts, event.originator_id)
                    item.update(amount_minor=payouts.payouts[event.payout_id]["amount_minor"],
                                currency=payouts.currency, seller_account_id=payouts.seller_account_id)
                item["at"] = event.timestamp.isoformat()
                found.append((notification.id, kind, item))
        reached = batch[-1].id if len(batch) == POLL_EVENTS_MAX else head
        return found, reached

    def _parties_of(self, kind: str, event: Any) -> frozenset[str]:
        if kind == "purchase":
            return frozenset({event.buyer_account_id, event.seller_account_id})
        parties = self._aggregate_parties(kind, event.originator_id)
        if kind == "debit":
            return parties | {event.seller_account_id}
        if kind == "settlement":
            return parties | set(event.seller_amounts)
        return parties

    def _aggregate_parties(self, kind: str, aggregate_id: UUID) -> frozenset[str]:
        cached = self._parties.get(aggregate_id)
        if cached is not None:
            return cached
        if len(self._parties) > PARTIES_CACHE_MAX:
            self._parties.clear()
        if kind == "delivery":
            purchase = self.market.load(Purchase, aggregate_id)
            parties = frozenset({purchase.buyer_account_id, purchase.seller_account_id})
        elif kind == "payout":
            parties = frozenset({self.market.load(SellerPayouts, aggregate_id).seller_account_id})
        elif kind == "invocation":
            invocation = self.market.load(Invocation, aggregate_id)
            self._currencies[aggregate_id] = invocation.currency
            parties = frozenset({invocation.buyer_account_id, invocation.seller_account_id})
        else:  # a channel's buyer (the sellers it pays are named by its events)
            channel = self.market.load(Channel, aggregate_id)
            self._currencies[aggregate_id] = channel.currency
            parties = frozenset({channel.buyer_account_id})
        self._parties[aggregate_id] = parties
        return parties

    def _currency(self, kind: str, event: Any) -> str:
        if event.originator_id not in self._currencies:
            self._aggregate_parties(kind, event.originator_id)
        return self._currencies.get(event.originator_id, "")
