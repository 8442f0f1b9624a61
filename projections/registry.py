"""Every projection the hub runs; the composition root builds a runner for each."""

from __future__ import annotations

from projections.audit_log import AuditLog
from projections.audit_tree import AuditTree
from projections.balances import Balances
from projections.base import Projection
from projections.devices import Devices
from projections.purchases import Purchases
from projections.search.projection import SearchProjection
from projections.trust import TrustProjection


def all_projections() -> list[Projection]:
    return [AuditLog(), Devices(), Balances(), SearchProjection(), Purchases(), AuditTree(), TrustProjection()]
