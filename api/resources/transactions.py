"""``GET /v1/transactions/{transaction_id}/trace``: one transaction's path, step by step.

A transaction is a purchase or a compute invocation (its id): the answer lists every fact of it
in log order (token issued, redemption at the seller's node, receipts, confirmations, delivered,
expired, revoked; an invocation's opening, binding, capture, rejections, lapse)
with the hub's recording time, the ``traceparent`` it came with, the log position, the node
trace that reported it, and the durations between the steps (``domain.app.transactions``).
Its buyer, its seller, auditors and admins see it; anyone else gets 404 ``purchase_not_found``,
as ``GET /v1/purchases/{purchase_id}``. Never the delivery token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon

from api.http import principal
from api.openapi import op, open_obj
from api.resources.purchases import _only_params

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace

NULLABLE_INT = {"type": ["integer", "null"]}
STEP = open_obj(step={"type": "string", "enum": ["purchased", "redeemed", "receipt", "confirmation", "delivered",
                                                  "expired", "revoked", "opened", "bound", "captured",
                                                  "rejection", "lapsed"]},
                event={"type": "string"}, position=NULLABLE_INT, version={"type": "integer"},
                at={"type": "string"}, at_ms={"type": "integer"}, traceparent={"type": ["string", "null"]},
                span_id={"type": ["string", "null"]}, parent_span_id={"type": ["string", "null"]},
                trace_link={"type": ["string", "null"]},
                actor={"type": ["string", "null"]}, correlation_id={"type": ["string", "null"]},
                reported_by={"type": ["object", "null"]}, details={"type": "object"})
TRACE = open_obj(transaction_id={"type": "string"}, kind={"type": "string", "enum": ["purchase", "invocation"]},
                 trace_id={"type": "string", "pattern": "^[0-9a-f]{32}$"}, status={"type": "string"},
                 steps={"type": "array", "items": STEP},
                 durations_ms=open_obj(purchase_to_redemption_ms=NULLABLE_INT, redemption_to_receipt_ms=NULLABLE_INT,
                                       receipt_to_confirmation_ms=NULLABLE_INT, purchase_to_delivery_ms=NULLABLE_INT,
                                       open_to_bound_ms=NULLABLE_INT, bound_to_capture_ms=NULLABLE_INT,
                                       open_to_capture_ms=NULLABLE_INT))


class TransactionTrace:
    openapi = {"get": op("One transaction's path ordered by time: purchase, redemption, receipts, confirmation, "
                         "delivery (or expiry, revocation), or an invocation's opening, binding and capture, with "
                         "traceparent, log position and durations (its buyer, its seller, auditors)",
                         "observability", auth="account",
                         responses={"200": TRACE},
                         description="The trace-id of a transaction is its id's 32 hex digits (W3C Trace Context; "
                                     "docs/adr/0007-trace-id-is-the-transaction-id.md).")}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_get(self, req: falcon.Request, resp: falcon.Response, transaction_id: str) -> None:
        who = principal(req)
        _only_params(req, frozenset())
        resp.media = self.market.transactions.trace(who.account_id, who.roles, transaction_id)
