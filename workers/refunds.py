"""Refund worker: gives a closed card channel's unspent money back to the buyer's card.

``sweep_refunds`` (cron) reads the settled card channels whose refund still has parts not
sent to Stripe (``projections.balances.card_refunds_due``) and enqueues
``send_card_refunds`` with the channel id only. ``send_card_refunds`` refunds each
PaymentIntent its planned part with a key derived from the channel and the intent; a
transient failure raises so Dramatiq retries with exponential backoff (same keys, so never
refunded twice); a permanent refusal is recorded and left for an operator. A lagging read
model only enqueues a channel whose refunds are done, and that run sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from domain.model.base import Meta
from projections.balances import card_refunds_due
from workers.runtime import WorkerRuntime

log = structlog.get_logger("workers.refunds")


def sweep_refunds(runtime: WorkerRuntime, enqueue: Callable[[str], Any] | None = None) -> list[str]:
    """Enqueue the channels with card refunds to send; returns their ids."""
    if runtime.market.money.cards is None:
        log.info("job.sweep_refunds", enqueued=0, reason="card rail not configured")
        return []  # no Stripe key: refunds stay pending until there is one
    due = [row["channel_id"] for row in card_refunds_due(runtime.views)]
    for channel_id in due:
        (enqueue or (lambda c: send_card_refunds(runtime, c)))(channel_id)
    log.info("job.sweep_refunds", enqueued=len(due))
    return due


def send_card_refunds(runtime: WorkerRuntime, channel_id: str) -> dict[str, str]:
    meta = Meta.system(f"refund:{channel_id}", channel_id).as_dict()
    statuses = runtime.market.refunds.send_card_refunds(meta, channel_id)
    log.info("job.send_card_refunds", channel_id=channel_id, statuses=statuses)
    return statuses
