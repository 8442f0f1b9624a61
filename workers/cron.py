"""Cron across many hosts: each schedule has a row with its next due time; the host whose
``UPDATE … WHERE next_run_s <= now`` changes the row enqueues the job. Every worker host
runs the same loop; exactly one of them fires each tick, and a dead host is no problem."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from domain.model.ports import ViewDB
from projections.base import lock_ddl

log = structlog.get_logger("cron")
DDL = "CREATE TABLE IF NOT EXISTS cron_schedule (name TEXT PRIMARY KEY, next_run_s BIGINT NOT NULL)"


@dataclass(frozen=True)
class Schedule:
    name: str
    every_s: int
    enqueue: Callable[[], object]


class Cron:
    def __init__(self, db: ViewDB, schedules: list[Schedule], clock_s: Callable[[], int]) -> None:
        self.db = db
        self.schedules = schedules
        self.clock_s = clock_s
        with db.transaction() as tx:
            lock_ddl(tx)
            tx.execute(DDL)
            for s in schedules:
                tx.execute("INSERT INTO cron_schedule VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (s.name, 0))

    def tick(self) -> list[str]:
        """Fire every schedule that is due and that no other host claimed first."""
        fired = []
        now_s = self.clock_s()
        for schedule in self.schedules:
            with self.db.transaction() as tx:
                claimed = tx.execute(
                    "UPDATE cron_schedule SET next_run_s = ? WHERE name = ? AND next_run_s <= ?",
                    (now_s + schedule.every_s, schedule.name, now_s),
                )
            if claimed == 1:
                schedule.enqueue()
                fired.append(schedule.name)
                log.info("cron.fired", job=schedule.name)
        return fired

    def run(self, stop: threading.Event, interval_s: float = 5.0) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - a failed tick is retried at the next one
                log.warning("cron.tick_failed", error=repr(exc))
            stop.wait(interval_s)
