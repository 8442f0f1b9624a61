"""Background jobs. Messages carry ids only; actors call application commands and are
idempotent, so a redelivered message changes nothing (Dramatiq delivers at least once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dramatiq
import structlog

if TYPE_CHECKING:
    from workers.cron import Schedule

log = structlog.get_logger("workers")
NONCE_SWEEP_EVERY_S = 600
SETTLEMENT_SWEEP_EVERY_S = 60  # far below the settle margin (an hour by default)
PAYOUT_SWEEP_EVERY_S = 3600
# Often enough that a refund interrupted after Stripe's answer is retried well within the
# 24 h Stripe keeps an idempotency key (a retry then returns the same refund).
REFUND_SWEEP_EVERY_S = 600


class Jobs:
    """Actors bound to one broker and one runtime (built once per worker process)."""

    def __init__(self, broker: dramatiq.Broker, runtime_factory: Callable[[], Any]) -> None:
        self._runtime_factory = runtime_factory
        self._runtime: Any = None
        self.sweep_nonces = dramatiq.actor(self._sweep_nonces, broker=broker, actor_name="sweep_nonces",
                                           queue_name="maintenance", max_retries=3)
        # Money actors share this process's runtime (built once, lazily).
        from workers.payouts import PayoutJobs
        from workers.refunds import RefundJobs
        from workers.settlement import SettlementJobs

        self.payouts = PayoutJobs(broker, lambda: self.runtime)
        self.refunds = RefundJobs(broker, lambda: self.runtime)
        self.settlements = SettlementJobs(broker, lambda: self.runtime)

    @property
    def runtime(self) -> Any:
        if self._runtime is None:
            self._runtime = self._runtime_factory()
        return self._runtime

    def _sweep_nonces(self) -> None:
        """Cron: forget single-use values whose time-to-live has passed."""
        log.info("job.sweep_nonces", removed=self.runtime.nonces.sweep())


def schedules(jobs: Jobs) -> list[Schedule]:
    """What the cron loop enqueues, and how often."""
    from workers.cron import Schedule

    return [Schedule("sweep_nonces", NONCE_SWEEP_EVERY_S, jobs.sweep_nonces.send),
            Schedule("sweep_settlements", SETTLEMENT_SWEEP_EVERY_S, jobs.settlements.sweep_settlements.send),
            Schedule("sweep_payouts", PAYOUT_SWEEP_EVERY_S, jobs.payouts.sweep_payouts.send),
            Schedule("sweep_refunds", REFUND_SWEEP_EVERY_S, jobs.refunds.sweep_refunds.send)]
