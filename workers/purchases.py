"""The delivery token expiry sweep.

``sweep_purchase_tokens`` (cron, every minute) reads the purchases whose token may have a
deadline behind it (``projections.purchases.due_for_expiry``: issued and past ``start_by``,
or redeemed and past ``exp``, beyond the 30 s clock skew the nodes allow) and asks the
application to expire each. The purchase decides (``Purchase.expire``) from its own state,
so a lagging read model, a redelivered message or two sweeps at once record nothing twice.
Work per run is bounded; what is left is taken by the next run.
"""

from __future__ import annotations

import structlog

from domain.model.base import Meta
from domain.model.delivery import CLOCK_SKEW_S
from projections.purchases import due_for_expiry
from workers.runtime import WorkerRuntime

log = structlog.get_logger("workers.purchases")
SWEEP_BATCH = 500


def sweep_purchase_tokens(runtime: WorkerRuntime, limit: int = SWEEP_BATCH) -> list[str]:
    """Expire the tokens whose deadline passed; returns the ids of the purchases changed."""
    market = runtime.market
    expired = []
    for purchase_id in due_for_expiry(runtime.views, now_s=market.now_s(), skew_s=CLOCK_SKEW_S, limit=limit):
        meta = Meta.system(f"token-expiry:{purchase_id}", purchase_id).as_dict()
        if market.purchases.expire_token(meta, purchase_id):
            expired.append(purchase_id)
    log.info("job.sweep_purchase_tokens", expired=len(expired))
    return expired
