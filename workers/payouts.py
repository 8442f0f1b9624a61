"""Payout worker: pays sellers' card-rail earnings out by Stripe Connect transfers.

``sweep_payouts`` (cron) records a ``PayoutRequested`` intent per seller and currency for
whatever the ledger shows earned and not yet requested, then enqueues ``send_payout`` with
ids only. ``send_payout`` makes the transfer with the payout id as Stripe's idempotency
key; a transient failure raises so Dramatiq retries with exponential backoff (same id,
so never paid twice); a permanent refusal is recorded and the amount is owed again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from domain.model.base import Meta
from projections.balances import earned_card_minor
from workers.runtime import WorkerRuntime

log = structlog.get_logger("workers.payouts")


def sweep_payouts(runtime: WorkerRuntime, enqueue: Callable[[str, str, str], Any] | None = None) -> list[str]:
    """Request payouts for everything owed; returns the new payout ids."""
    market = runtime.market
    meta = Meta.system("payout-sweep").as_dict()
    created: list[str] = []
    for row in earned_card_minor(runtime.views):
        payout_id = market.payouts.request_payout(meta, row["seller_account_id"], row["currency"],
                                          earned_minor=int(row["earned_minor"]))
        if payout_id is not None:
            created.append(payout_id)
            (enqueue or (lambda *a: send_payout(runtime, *a)))(row["seller_account_id"], row["currency"], payout_id)
    log.info("job.sweep_payouts", created=len(created))
    return created


def send_payout(runtime: WorkerRuntime, seller_account_id: str, currency: str, payout_id: str) -> str:
    meta = Meta.system(f"payout:{payout_id}", payout_id).as_dict()
    return runtime.market.payouts.send_payout(meta, seller_account_id, currency, payout_id)
