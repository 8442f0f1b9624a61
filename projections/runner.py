"""Runs one projection: catch up in batches, then wait for new events; survive lost
connections; only one active runner per projection across all hosts.

* Catch-up reads ``select_notifications`` after the tracked position, applies a batch of
  events and advances the tracking row in the same transaction (exactly-once). The
  tracking update is a compare-and-set on the old position, so even two runners that both
  believed they held the lock could not apply an event twice.
* Waiting: PostgreSQL LISTENs on the event table's NOTIFY channel (with a poll timeout as a
  safety net against a lost NOTIFY); SQLite has no notifications and polls.
* Single active runner: a PostgreSQL session advisory lock, or an exclusive file lock for the
  embedded store. A runner that cannot take the lock stands by and retries.
* Supervision: a transient database error releases the lock, backs off and starts again.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from eventsourcing.persistence import OperationalError as EsOperationalError
from eventsourcing.persistence import PersistenceError

from domain.model.ports import RunnerLock, ViewDB
from projections.base import TRACKING_DDL, Projection, lock_ddl, read_position

log = structlog.get_logger("projections")


class LostRace(Exception):
    """Raised when another runner advanced the tracking row first (batch rolled back)."""


class ProjectionRunner:
    """Feeds one projection from the application's log. Holds no state another host needs."""

    def __init__(
        self, projection: Projection, *, recorder: Any, mapper: Any, views: ViewDB, lock: RunnerLock,
        batch_size: int = 500, poll_s: float = 0.5,
    ) -> None:
        self.projection = projection
        self.recorder = recorder
        self.mapper = mapper
        self.views = views
        self.lock = lock
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.active = threading.Event()
        self.errors = 0

    # -- one step ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the tracking table and this projection's tables; rebuild on a version bump."""
        name, version = self.projection.name, self.projection.version
        with self.views.transaction() as tx:
            lock_ddl(tx)
            tx.execute(TRACKING_DDL)
            tracked = read_position(tx, name)
            if tracked is not None and tracked[1] != version:
                log.info("projection.rebuild", projection=name, old_version=tracked[1], version=version)
                self.projection.drop_tables(tx)
                tx.execute("DELETE FROM projection_tracking WHERE name = ?", (name,))
                tracked = None
            self.projection.create_tables(tx)
            if tracked is None:
                tx.execute("INSERT INTO projection_tracking VALUES (?, 0, ?) ON CONFLICT (name) DO NOTHING",
                           (name, version))

    def process_batch(self) -> int:
        """Apply the next batch of events; return how many were read (0 = caught up)."""
        name = self.projection.name
        with self.views.transaction() as tx:
            tracked = read_position(tx, name)
            position = tracked[0] if tracked else 0
            notifications = self.recorder.select_notifications(
                start=position, limit=self.batch_size, topics=self.projection.topics, inclusive_of_start=False
            )
            if not notifications:
                return 0
            for notification in notifications:
                event = self.mapper.to_domain_event(notification)
                self.projection.process(event, tx, notification.id)
            moved = tx.execute("UPDATE projection_tracking SET position = ? WHERE name = ? AND position = ?",
                               (notifications[-1].id, name, position))
            if moved != 1:
                raise LostRace(f"another runner advanced {name}")
        return len(notifications)

    def catch_up(self) -> int:
        """Process until no events are left; return the number processed."""
        total = 0
        while (n := self.process_batch()) > 0:
            total += n
        return total

    def position(self) -> int:
        with self.views.transaction() as tx:
            tracked = read_position(tx, self.projection.name)
        return tracked[0] if tracked else 0

    def lag(self) -> int:
        """How far behind the head of the log this projection is (for the watchdog)."""
        return max(0, (self.recorder.max_notification_id() or 0) - self.position())

    def rebuild(self) -> int:
        """Drop and rebuild from position 0, in batches."""
        with self.views.transaction() as tx:
            tx.execute(TRACKING_DDL)
            self.projection.drop_tables(tx)
            tx.execute("DELETE FROM projection_tracking WHERE name = ?", (self.projection.name,))
        self.setup()
        return self.catch_up()

    # -- supervised loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, standby_s: float = 1.0) -> None:
        backoff_s = 0.1
        recoverable = (*self.views.transient_errors, EsOperationalError, PersistenceError, LostRace, OSError)
        while not stop.is_set():
            try:
                if not self.lock.acquire():
                    stop.wait(standby_s)
                    continue
                self.active.set()
                self.setup()
                while not stop.is_set():
                    if self.process_batch() == 0:
                        self.lock.wait_for_events(self.poll_s)
                    backoff_s = 0.1
            except recoverable as exc:
                self.errors += 1
                log.warning("projection.recovering", projection=self.projection.name, error=repr(exc),
                            backoff_s=backoff_s)
                self.active.clear()
                self._release_quietly()
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
        self.active.clear()
        self._release_quietly()

    def _release_quietly(self) -> None:
        try:
            self.lock.release()
        except Exception as exc:  # noqa: BLE001 - the session may already be dead; that is fine
            log.debug("projection.release_failed", error=repr(exc))


class RunnerGroup:
    """Starts runners in daemon threads and stops them together."""

    def __init__(self, runners: list[ProjectionRunner]) -> None:
        self.runners = runners
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> RunnerGroup:
        for runner in self.runners:
            thread = threading.Thread(target=runner.run, args=(self.stop_event,), daemon=True,
                                      name=f"projection-{runner.projection.name}")
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout_s)
