"""Background jobs. Messages carry ids only; actors call application commands and are
idempotent, so a redelivered message changes nothing (Dramatiq delivers at least once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
import structlog

log = structlog.get_logger("workers")


class Jobs:
    """Actors bound to one broker and one runtime (built once per worker process)."""

    def __init__(self, broker: dramatiq.Broker, runtime_factory: Callable[[], Any]) -> None:
        self._runtime_factory = runtime_factory
        self._runtime: Any = None
        self.sweep_nonces = dramatiq.actor(self._sweep_nonces, broker=broker, actor_name="sweep_nonces",
                                           queue_name="maintenance", max_retries=3)

    @property
    def runtime(self) -> Any:
        if self._runtime is None:
            self._runtime = self._runtime_factory()
        return self._runtime

    def _sweep_nonces(self) -> int:
        """Cron: forget single-use values whose time-to-live has passed."""
        removed = self.runtime.nonces.sweep()
        log.info("job.sweep_nonces", removed=removed)
        return removed
