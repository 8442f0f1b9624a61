"""The metered-session lapse sweep.

``sweep_invocations`` (cron, every minute) reads the open holds whose lapse time passed
(``projections.balances.holds_due``: the session's ``exp`` plus the report grace, and no final
report captured it) and asks the application to lapse each (``InvocationService.lapse``): the
invocation records ``Lapsed`` and the channel releases the whole hold, in one save. The
invocation decides from its own state, so a lagging read model, a redelivered message or two
sweeps at once record nothing twice. Work per run is bounded; the next run takes the rest.
"""

from __future__ import annotations

import structlog

from domain.model.base import Meta
from projections.balances import holds_due
from workers.runtime import WorkerRuntime

log = structlog.get_logger("workers.invocations")
SWEEP_BATCH = 500


def sweep_invocations(runtime: WorkerRuntime, limit: int = SWEEP_BATCH) -> list[str]:
    """Lapse the sessions whose hold outlived its report grace; returns the invocation ids lapsed."""
    market = runtime.market
    due = [row["invocation_id"] for row in holds_due(runtime.views, market.now_s(), limit)]
    lapsed = market.invocations.lapse_due(Meta.system("invocation-lapse").as_dict(), due)
    log.info("job.sweep_invocations", due=len(due), lapsed=len(lapsed))
    return lapsed
