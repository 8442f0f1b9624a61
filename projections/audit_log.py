"""The audit log: every event with who, why and when, in log order, for auditors."""

from __future__ import annotations

from typing import Any

from domain.model.ports import Tx
from projections.base import Projection


class AuditLog(Projection):
    name = "audit_log"
    tables = ("audit_events",)

    def ddl(self, dialect: str) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS audit_events ("
            " position BIGINT PRIMARY KEY, originator_id TEXT NOT NULL, originator_version BIGINT NOT NULL,"
            " event_type TEXT NOT NULL, actor TEXT NOT NULL, correlation_id TEXT NOT NULL,"
            " causation_id TEXT NOT NULL, recorded_at TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS audit_events_correlation ON audit_events (correlation_id)",
            "CREATE INDEX IF NOT EXISTS audit_events_originator ON audit_events (originator_id)",
        ]

    def process(self, event: Any, tx: Tx, position: int) -> None:  # every event, one handler
        meta = getattr(event, "meta", None) or {}
        tx.execute(
            "INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (position, str(event.originator_id), event.originator_version, type(event).__qualname__,
             meta.get("actor", ""), meta.get("correlation_id", ""), meta.get("causation_id", ""),
             event.timestamp.isoformat()),
        )


def list_events(db: Any, *, after: int, limit: int, correlation_id: str | None, originator_id: str | None
                ) -> list[dict[str, Any]]:
    sql = "SELECT * FROM audit_events WHERE position > ?"
    params: list[Any] = [after]
    if correlation_id:
        sql += " AND correlation_id = ?"
        params.append(correlation_id)
    if originator_id:
        sql += " AND originator_id = ?"
        params.append(originator_id)
    return db.fetchall(sql + " ORDER BY position LIMIT ?", (*params, limit))
