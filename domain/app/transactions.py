"""The path of one transaction, read from its events (``GET /v1/transactions/{id}/trace``).

A transaction is a purchase or a compute invocation (its id either way). Its trace is read from
the log, not from a read model, so it is exact as soon as an event commits: every event of the
``Purchase`` (or ``Invocation``) aggregate, in order, each with its log position, the time the
hub recorded it, the ``traceparent`` of the hub's span that recorded it and the caller's span
(``parent_span_id``: the node's, for what a node reported; ``api.tracing``: the trace-id is the
transaction id, ADR 0007), the actor and request id, and for the facts a node reported
(redemption, receipts, confirmations, an invocation's binding and final receipt) the ``Trace``
that carried them: it is saved in the same transaction just before them
(``domain.app.traces``), so it is found among the few positions below.

Durations are between the hub's recording times of the first fact of each kind
(``purchase_to_redemption_ms``, ``redemption_to_receipt_ms``, ``receipt_to_confirmation_ms``,
negative when the buyer's confirmation arrived first, ``purchase_to_delivery_ms``); the nodes'
own times (``redeemed_at_ms``, ``first_byte_ms`` ...) are in each step's ``details``. An
invocation's: ``open_to_bound_ms``, ``bound_to_capture_ms``, ``open_to_capture_ms``. Never the
delivery or invoke token, a receipt's or confirmation's signature, or a payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from domain.app.eventsourcing_ext import positions_of
from domain.app.service import Service
from domain.model.errors import InvocationNotFound, PurchaseNotFound

TRACE_TOPIC = "domain.model.traces:Trace.TraceRecorded"
REPORTER_SEARCH_POSITIONS = 16  # a trace batch saves its Trace, then at most a few purchase events
# Per kind: event name -> step, each step's details, the durations between first steps, and
# the steps a node reported (found with the node's Trace).
KINDS: dict[str, dict[str, Any]] = {
    "purchase": {
        "steps": {"Purchased": "purchased", "TokenRedeemed": "redeemed", "ReceiptRecorded": "receipt",
                  "ConfirmationRecorded": "confirmation", "Delivered": "delivered", "TokenExpired": "expired",
                  "TokenRevoked": "revoked"},
        "details": {
            "purchased": ("listing_id", "listing_version", "channel_id", "price_minor", "fee_minor", "currency",
                          "seller_device_id", "issued_at_s", "start_by_s", "expires_at_s"),
            "redeemed": ("device_id", "redeemed_at_ms"),
            "receipt": ("seq", "outcome", "bytes_sent", "sessions", "first_byte_ms", "last_byte_ms",
                        "blocks_acked"),
            "confirmation": ("blocks_verified", "received_at_ms"),
            "delivered": ("delivered_at_ms",),
            "expired": ("reason", "at_s"),
            "revoked": ("by", "reason", "at_s"),
        },
        "durations": (("purchase_to_redemption_ms", "purchased", "redeemed"),
                      ("redemption_to_receipt_ms", "redeemed", "receipt"),
                      ("receipt_to_confirmation_ms", "receipt", "confirmation"),
                      ("purchase_to_delivery_ms", "purchased", "delivered")),
        "reported": ("redeemed", "receipt", "confirmation", "delivered"),
    },
    "invocation": {
        "steps": {"Opened": "opened", "Bound": "bound", "Captured": "captured", "RejectionRecorded": "rejection",
                  "Lapsed": "lapsed"},
        "details": {
            "opened": ("listing_id", "listing_version", "channel_id", "unit", "unit_price_minor", "currency",
                       "budget_minor", "seller_device_id", "issued_at_s", "start_by_s", "expires_at_s"),
            "bound": ("device_id", "bound_at_ms"),
            "captured": ("seq", "final_cumulative_minor", "cumulative_units", "captured_minor", "released_minor",
                         "fee_minor", "end_reason"),
            "rejection": ("rule", "code", "at_ms"),
            "lapsed": ("at_s",),
        },
        "durations": (("open_to_bound_ms", "opened", "bound"), ("bound_to_capture_ms", "bound", "captured"),
                      ("open_to_capture_ms", "opened", "captured")),
        "reported": ("bound", "captured", "rejection"),
    },
}


class TransactionService(Service):
    """Reads a transaction's trace (composed into ``Marketplace.transactions``)."""

    def trace(self, account_id: str, roles: Sequence[str], transaction_id: str) -> dict[str, Any]:
        """The path of a purchase or compute invocation for its buyer, its seller, an auditor or
        an admin.

        Raises:
            PurchaseNotFound: unknown, or not visible to the caller (as ``GET /v1/purchases/{id}``;
                the same answer for an invocation, so nobody learns which ids exist).
        """
        kind, view = self._visible(account_id, roles, transaction_id)
        rules = KINDS[kind]
        aggregate_id = UUID(view["id"])
        events = list(self.market.repository.event_store.get(aggregate_id))
        positions = positions_of(self.market.recorder, [(aggregate_id, e.originator_version) for e in events])
        steps = [self._step(rules, event, positions.get((aggregate_id, event.originator_version)))
                 for event in events]
        first: dict[str, int] = {}
        for step in steps:
            first.setdefault(step["step"], step["at_ms"])
        durations = {name: first[b] - first[a] if a in first and b in first else None
                     for name, a, b in rules["durations"]}
        return {"transaction_id": str(aggregate_id), "kind": kind, "trace_id": aggregate_id.hex,
                "status": view.get("status"), "buyer_account_id": view.get("buyer_account_id"),
                "seller_account_id": view.get("seller_account_id"), "steps": steps, "durations_ms": durations}

    def _visible(self, account_id: str, roles: Sequence[str], transaction_id: str) -> tuple[str, dict[str, Any]]:
        try:
            return "purchase", self.market.purchases.view(account_id, roles, transaction_id)
        except PurchaseNotFound:
            invocations = getattr(self.market, "invocations", None)
            if invocations is None:
                raise
        try:
            return "invocation", invocations.view(account_id, roles, transaction_id)
        except InvocationNotFound:
            raise PurchaseNotFound("transaction not found") from None

    def _step(self, rules: dict[str, Any], event: Any, position: int | None) -> dict[str, Any]:
        name = rules["steps"].get(type(event).__name__, type(event).__name__)
        meta = getattr(event, "meta", None) or {}
        traceparent = meta.get("traceparent")
        return {
            "step": name, "event": type(event).__qualname__, "position": position,
            "version": event.originator_version, "at": event.timestamp.isoformat(),
            "at_ms": int(event.timestamp.timestamp() * 1000),
            "traceparent": traceparent, "span_id": traceparent.split("-")[2] if traceparent else None,
            "parent_span_id": meta.get("parent_span_id"),
            "trace_link": meta.get("trace_link"), "actor": meta.get("actor"),
            "correlation_id": meta.get("correlation_id"),
            "reported_by": self._reporter(position, meta.get("correlation_id")) if name in rules["reported"]
            else None,
            "details": {k: getattr(event, k) for k in rules["details"].get(name, ()) if hasattr(event, k)},
        }

    def _reporter(self, position: int | None, correlation_id: str | None) -> dict[str, Any] | None:
        """The node's ``Trace`` saved with this event (same request, just below it in the log)."""
        if position is None or not correlation_id:
            return None
        start = max(1, position - REPORTER_SEARCH_POSITIONS)
        found = self.market.recorder.select_notifications(start=start, limit=REPORTER_SEARCH_POSITIONS,
                                                          stop=position - 1, topics=[TRACE_TOPIC])
        for notification in reversed(found):
            trace = self.market.mapper.to_domain_event(notification)
            if (trace.meta or {}).get("correlation_id") == correlation_id:
                return {"device_id": trace.device_id, "seq": trace.seq, "kind": trace.kind,
                        "entry_hash": trace.entry_hash, "position": notification.id,
                        "traceparent": trace.meta.get("traceparent")}
        return None
