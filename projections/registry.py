"""Every projection the hub runs; the composition root builds a runner for each."""

from __future__ import annotations

from projections.audit_log import AuditLog
from projections.base import Projection
from projections.devices import Devices


def all_projections() -> list[Projection]:
    return [AuditLog(), Devices()]
