"""Devices by account: what a seller sees of their nodes, and what search shows of a seller."""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any

from domain.model.device import Device
from domain.model.ports import Tx
from projections.base import Projection


class Devices(Projection):
    name = "devices"
    event_types = (Device.Enrolled, Device.KeyRotated, Device.Suspended)
    tables = ("devices",)

    def ddl(self, dialect: str) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS devices ("
            " device_id TEXT PRIMARY KEY, account_id TEXT NOT NULL, name TEXT NOT NULL, endpoint TEXT NOT NULL,"
            " kid TEXT NOT NULL, suspended BOOLEAN NOT NULL, enrolled_at TEXT NOT NULL, rotations INTEGER NOT NULL)",
            "CREATE INDEX IF NOT EXISTS devices_account ON devices (account_id)",
        ]

    @singledispatchmethod
    def process(self, event: Any, tx: Tx, position: int) -> None:
        """Ignore other events."""

    @process.register
    def _enrolled(self, event: Device.Enrolled, tx: Tx, position: int) -> None:
        tx.execute(
            "INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (device_id) DO NOTHING",
            (str(event.originator_id), event.account_id, event.name, event.endpoint, event.kid, False,
             event.timestamp.isoformat()),
        )

    @process.register
    def _rotated(self, event: Device.KeyRotated, tx: Tx, position: int) -> None:
        tx.execute("UPDATE devices SET kid = ?, rotations = rotations + 1 WHERE device_id = ?",
                   (event.kid, str(event.originator_id)))

    @process.register
    def _suspended(self, event: Device.Suspended, tx: Tx, position: int) -> None:
        tx.execute("UPDATE devices SET suspended = ? WHERE device_id = ?", (True, str(event.originator_id)))


def devices_of(db: Any, account_id: str) -> list[dict[str, Any]]:
    return db.fetchall("SELECT * FROM devices WHERE account_id = ? ORDER BY enrolled_at", (account_id,))
