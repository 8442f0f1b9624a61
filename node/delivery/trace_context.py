"""The trace a batch of outbox entries belongs to (W3C ``traceparent``, ADR 0007).

One transaction is one trace whose trace-id is the purchase id's 32 hex digits: the node knows
the purchase id from its delivery token's ``sub`` (and every redemption, receipt and
confirmation it reports names it; a compute session's ``invoke_*`` entries name their invocation,
whose trace-id is the invocation id's). When every entry of a batch reports on one purchase, the
uplink sends ``traceparent: 00-<purchase hex>-<new span>-01`` with the batch and the hub
records it in the meta of what the batch changes; a batch that mixes purchases (or carries
heartbeats) belongs to no single transaction and is sent without one.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any
from uuid import UUID


def entry_purchase(kind: str, body: dict[str, Any]) -> str | None:
    """The transaction an outbox entry reports on: its purchase, or its compute invocation
    (``invoke_*`` entries name ``invocation_id``); None for heartbeats and unknown shapes."""
    source = body.get("credentialSubject") if kind in ("receipt", "confirmation") else body
    if not isinstance(source, dict):
        return None
    found = source.get("invocation_id") if kind.startswith("invoke_") else source.get("purchase_id")
    return found if isinstance(found, str) else None


def batch_traceparent(batch: Sequence[Any]) -> str | None:
    """``traceparent`` for a batch of entries (``.kind``, ``.body``) on one purchase, else None."""
    purchases = {entry_purchase(entry.kind, entry.body) for entry in batch}
    if len(purchases) != 1 or None in purchases:
        return None
    try:
        trace_id = UUID(purchases.pop() or "").hex
    except ValueError:
        return None
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"
