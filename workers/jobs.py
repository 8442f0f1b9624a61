"""Background jobs. Messages carry ids only; actors call application commands and are
idempotent, so a redelivered message changes nothing (Dramatiq delivers at least once).

``Jobs(broker, runtime_factory)`` registers every actor on an explicit broker (nothing is
registered at import), with the runtime handed in by ``RuntimeMiddleware`` and the one retry
rule of ``workers.runtime``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
import structlog

from workers import invocations, payouts, purchases, refunds, settlement, settlement_reconcile
from workers.cron import Schedule
from workers.runtime import RuntimeMiddleware, WorkerRuntime, retry_rule

log = structlog.get_logger("workers")
NONCE_SWEEP_EVERY_S = 600
SETTLEMENT_SWEEP_EVERY_S = 60  # far below the settle margin (an hour by default)
PAYOUT_SWEEP_EVERY_S = 3600
# Often enough that a refund interrupted after Stripe's answer is retried well within the
# 24 h Stripe keeps an idempotency key (a retry then returns the same refund).
REFUND_SWEEP_EVERY_S = 600
RECONCILE_EVERY_S = 600  # ledger vs contract for every closing or settled chain channel
TOKEN_SWEEP_EVERY_S = 60  # delivery tokens: start deadlines are minutes long
INVOCATION_SWEEP_EVERY_S = 60  # metered sessions whose hold outlived the report grace


class Jobs:
    """Every actor, bound to one broker; their runtime comes from the worker-boot middleware."""

    def __init__(self, broker: dramatiq.Broker, runtime_factory: Callable[[], WorkerRuntime]) -> None:
        self.middleware = RuntimeMiddleware(runtime_factory)
        broker.add_middleware(self.middleware)

        def actor(fn: Callable[..., Any], name: str, queue: str, max_retries: int, **backoff: int) -> Any:
            return dramatiq.actor(fn, broker=broker, actor_name=name, queue_name=queue,
                                  retry_when=retry_rule(max_retries), **backoff)

        rt = lambda: self.middleware.runtime  # noqa: E731 - read at call time, after boot
        self.sweep_nonces = actor(lambda: _sweep_nonces(rt()), "sweep_nonces", "maintenance", 3)
        self.send_payout = actor(lambda seller, currency, payout_id: payouts.send_payout(rt(), seller, currency,
                                                                                          payout_id),
                                 "send_payout", "payouts", 8, min_backoff=500, max_backoff=60_000)
        self.sweep_payouts = actor(lambda: payouts.sweep_payouts(rt(), self.send_payout.send), "sweep_payouts",
                                   "payouts", 3)
        self.send_card_refunds = actor(lambda channel_id: refunds.send_card_refunds(rt(), channel_id),
                                       "send_card_refunds", "payouts", 8, min_backoff=500, max_backoff=60_000)
        self.sweep_refunds = actor(lambda: refunds.sweep_refunds(rt(), self.send_card_refunds.send), "sweep_refunds",
                                   "payouts", 3)
        # Unavailable (RPC down, not mined yet) is retried and the next run resumes from the
        # recorded Submitted; anything else the run recorded.
        self.settle_channel = actor(lambda channel_id: settlement.settle_channel(rt(), channel_id),
                                    settlement.SETTLE_ACTOR, settlement.SETTLE_QUEUE, 20, min_backoff=1_000,
                                    max_backoff=300_000)
        self.sweep_settlements = actor(lambda: settlement.sweep_settlements(rt(), self.settle_channel.send),
                                       "sweep_settlements", settlement.SETTLE_QUEUE, 3)
        self.reconcile_settlements = actor(lambda: settlement_reconcile.reconcile_settlements(rt()),
                                           "reconcile_settlements", settlement.SETTLE_QUEUE, 3)
        self.sweep_purchase_tokens = actor(lambda: purchases.sweep_purchase_tokens(rt()), "sweep_purchase_tokens",
                                           "maintenance", 3)
        self.sweep_invocations = actor(lambda: invocations.sweep_invocations(rt()), "sweep_invocations",
                                       "maintenance", 3)


def _sweep_nonces(runtime: WorkerRuntime) -> None:
    """Cron: forget single-use values whose time-to-live has passed."""
    log.info("job.sweep_nonces", removed=runtime.nonces.sweep())


def schedules(jobs: Jobs) -> list[Schedule]:
    """What the cron loop enqueues, and how often."""
    return [Schedule("sweep_nonces", NONCE_SWEEP_EVERY_S, jobs.sweep_nonces.send),
            Schedule("sweep_settlements", SETTLEMENT_SWEEP_EVERY_S, jobs.sweep_settlements.send),
            Schedule("sweep_payouts", PAYOUT_SWEEP_EVERY_S, jobs.sweep_payouts.send),
            Schedule("sweep_refunds", REFUND_SWEEP_EVERY_S, jobs.sweep_refunds.send),
            Schedule("reconcile_settlements", RECONCILE_EVERY_S, jobs.reconcile_settlements.send),
            Schedule("sweep_purchase_tokens", TOKEN_SWEEP_EVERY_S, jobs.sweep_purchase_tokens.send),
            Schedule("sweep_invocations", INVOCATION_SWEEP_EVERY_S, jobs.sweep_invocations.send)]
