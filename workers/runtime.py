"""What every actor shares: the runtime it works on, and the one retry rule.

The runtime is handed in by ``RuntimeMiddleware`` (built once per worker process, on first
use after the worker boots, by the factory the entry point gives), so actors never build
or look up one themselves. Messages carry ids only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import dramatiq
import structlog

from domain.model.errors import MarketError, Unavailable

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.ports import NonceStore, SettleChain, SettlementLease, ViewDB

log = structlog.get_logger("workers")


class WorkerRuntime(Protocol):
    """What the jobs use (``ops.bootstrap.Runtime`` satisfies it)."""

    market: Marketplace
    views: ViewDB
    nonces: NonceStore

    def settle_chain(self) -> SettleChain: ...

    def settlement_lease(self) -> SettlementLease: ...


class RuntimeMiddleware(dramatiq.Middleware):
    """Gives this worker process's actors their runtime, built once (thread-safe)."""

    def __init__(self, factory: Callable[[], WorkerRuntime]) -> None:
        self._factory = factory
        self._runtime: WorkerRuntime | None = None
        self._lock = threading.Lock()

    @property
    def runtime(self) -> WorkerRuntime:
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    self._runtime = self._factory()
        return self._runtime

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        _ = self.runtime  # connect before the first message, not during it


def retry_rule(max_retries: int) -> Callable[[int, BaseException], bool]:
    """The one retry rule (Dramatiq's ``retry_when``): a transient failure (``Unavailable``:
    a provider or the chain unreachable, a transaction not mined yet) or an unexpected error
    is retried with exponential backoff, at most ``max_retries`` times; any other
    marketplace error is final (the command recorded what it could) and is not retried."""

    def should_retry(retries: int, exc: BaseException) -> bool:
        final = isinstance(exc, MarketError) and not isinstance(exc, Unavailable)
        if final or retries >= max_retries:
            log.warning("job.failed", error=type(exc).__name__, code=getattr(exc, "code", None),
                        detail=str(exc)[:300], retries=retries, final=final)
            return False
        return True

    return should_retry
