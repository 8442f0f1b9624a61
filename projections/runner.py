"""Runs one projection: catch up in batches, then wait for new events; survive lost
connections and failing handlers; only one active runner per projection across all hosts.

* Catch-up reads ``select_notifications`` after the tracked position, up to the log's head
  read just before, applies a batch of events and advances the tracking row in the same
  transaction (exactly-once). The tracking update is a compare-and-set on the old position,
  so even two runners that both believed they held the lock could not apply an event twice.
  When a batch reaches the head, the position moves to the head even past events this
  projection does not handle (at most once a second while only those arrive): lag is
  ``head - position`` for every projection. Safe because both stores hand out positions in
  commit order (PostgreSQL: the recorder's table lock; SQLite: one writer).
* Waiting: PostgreSQL LISTENs on the event table's NOTIFY channel (with a poll timeout as a
  safety net against a lost NOTIFY); SQLite has no notifications and polls.
* Single active runner: a PostgreSQL session advisory lock, or an exclusive file lock for the
  embedded store. A runner that cannot take the lock stands by and retries.
* Supervision: a lost connection releases the lock, backs off (0.1 s doubling to 5 s) and
  starts again. Any other error, a handler's above all, is recorded in
  ``projection_failures`` (``projections.health``: position, error type and message) and
  retried with backoff (0.5 s doubling to 60 s) while the runner keeps its lock; the events
  before the failing one in its batch are committed first. A transient-looking error that
  repeats three times on the same event is recorded too. Nothing ever skips an event: the
  failure ends when the batch holding the event commits, or ``resume`` retries at once.
* Heartbeat: while active, a thread writes ``projection_runners`` (holder, heartbeat, last
  progress) every ``heartbeat_s``, so a runner that hangs is seen by the watchdog.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from eventsourcing.persistence import OperationalError as EsOperationalError
from eventsourcing.persistence import PersistenceError

from domain.model.ports import RunnerLock, Tx, ViewDB
from projections import health
from projections.base import TRACKING_DDL, Projection, lock_ddl, read_position
from projections.coalesce import CoalescingTx

log = structlog.get_logger("projections")

TRANSIENT_TRIES = 3  # a "transient" error on the same event this often is a failure


class LostRace(Exception):
    """Raised when another runner advanced the tracking row first (batch rolled back)."""


class ProjectionRunner:
    """Feeds one projection from the application's log. Holds no state another host needs."""

    def __init__(
        self, projection: Projection, *, recorder: Any, mapper: Any, views: ViewDB, lock: RunnerLock,
        batch_size: int = 500, poll_s: float = 0.5, heartbeat_s: float = health.HEARTBEAT_S,
        coalesce_writes: bool = False, buffer_writes: bool = False, durable: bool = True,
    ) -> None:
        self.projection = projection
        self.recorder = recorder
        self.mapper = mapper
        self.views = views
        self.lock = lock
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        # Rebuilds into a scratch store only: INSERTs sent in runs (projections.coalesce).
        self.coalesce_writes = coalesce_writes
        # Rebuilds into a scratch store only: the projection may hold the batch's rows in memory
        # and write them once before the tracking row moves (Projection.buffered / flush).
        if buffer_writes:
            projection.buffered = True
        # A scratch store needs no durability: its commits do not wait for the WAL flush.
        self.durable = durable
        self.idle_advance_s = 1.0
        self.resume_poll_s = 0.5
        self.active = threading.Event()
        self.errors = 0
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.progress_at = time.time()
        self.failed_event: tuple[int, int] | None = None  # (position, index in batch) of the last handler error
        self._failing = False  # a failure record is open: the next commit clears it
        self._retry_in_s = 0.0
        self._advanced_at = float("-inf")
        self._streak = (0, 0)  # (position, count) of transient errors on one event
        self._backoff_s = 0.1

    # -- one step ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the tracking, health and projection tables; rebuild on a version bump."""
        name, version = self.projection.name, self.projection.version
        with self.views.transaction() as tx:
            lock_ddl(tx)
            tx.execute(TRACKING_DDL)
            for statement in health.HEALTH_DDL:
                tx.execute(statement)
            tracked = read_position(tx, name)
            if tracked is not None and tracked[1] != version:
                log.info("projection.rebuild", projection=name, old_version=tracked[1], version=version)
                self.projection.drop_tables(tx)
                tx.execute("DELETE FROM projection_tracking WHERE name = ?", (name,))
                health.clear_failure(tx, name)  # new code: the old failure may be gone
                tracked = None
            self.projection.create_tables(tx)
            if tracked is None:
                tx.execute("INSERT INTO projection_tracking VALUES (?, 0, ?) ON CONFLICT (name) DO NOTHING",
                           (name, version))
            failure = health.read_failure(tx, name)
        self._failing = failure is not None and failure.failing
        if failure is not None and failure.failing and failure.retry_at is not None:
            self._retry_in_s = max(0.0, failure.retry_at - time.time())  # the backoff survives restarts

    def process_batch(self) -> int:
        """Apply the next batch of events; return how many were read (0 = caught up).

        A handler error rolls the whole batch back and propagates; ``failed_event`` then
        says which event raised."""
        return self._batch()

    def _batch(self, stop: int | None = None) -> int:
        name = self.projection.name
        self.failed_event = None
        head = self.recorder.max_notification_id() or 0
        head = head if stop is None else min(head, stop)
        with self.views.transaction() as opened:
            tx = CoalescingTx(opened) if self.coalesce_writes else opened
            if not self.durable and tx.dialect == "postgres":
                tx.execute("SET LOCAL synchronous_commit = off")
            tracked = read_position(tx, name)
            position = tracked[0] if tracked else 0
            if head <= position:
                return 0
            notifications = self.recorder.select_notifications(
                start=position, limit=self.batch_size, stop=head, topics=self.projection.topics,
                inclusive_of_start=False)
            if not notifications and time.monotonic() - self._advanced_at < self.idle_advance_s:
                return 0  # only others' events: move past them at most once a second
            self._apply(tx, notifications, self.mapper.to_domain_event)
            new_position = notifications[-1].id if len(notifications) == self.batch_size else head
            self._advance(tx, position, new_position)
        self._recovered(new_position)
        return len(notifications)

    def apply_read(self, notifications: list[Any], upto: int, decode: Callable[[Any], Any]) -> int:
        """Apply a batch of the log read once for several runners (``ops.audit_replay``'s
        shared read): those of ``notifications`` after this projection's position, up to
        ``upto`` and of its topics, then move its position to ``upto``; one transaction, as
        :meth:`process_batch`. ``decode`` maps a notification to its event (shared, cached)."""
        name = self.projection.name
        self.failed_event = None
        wanted = set(self.projection.topics)
        with self.views.transaction() as opened:
            tx = CoalescingTx(opened) if self.coalesce_writes else opened
            if not self.durable and tx.dialect == "postgres":
                tx.execute("SET LOCAL synchronous_commit = off")
            tracked = read_position(tx, name)
            position = tracked[0] if tracked else 0
            if upto <= position:
                return 0
            mine = [n for n in notifications if position < n.id <= upto and (not wanted or n.topic in wanted)]
            self._apply(tx, mine, decode)
            self._advance(tx, position, upto)
        self._recovered(upto)
        return len(mine)

    def _apply(self, tx: Tx, notifications: list[Any], decode: Callable[[Any], Any]) -> None:
        stored = getattr(self.projection, "reads_stored_events", False)
        for index, notification in enumerate(notifications):
            try:
                # A projection that hashes the log as stored (the audit tree) takes the record itself.
                event = notification if stored else decode(notification)
                self.projection.process(event, tx, notification.id)
            except Exception:
                self.failed_event = (notification.id, index)
                raise
        self.projection.flush(tx)

    def _advance(self, tx: Tx, position: int, new_position: int) -> None:
        name = self.projection.name
        if self._failing:
            health.clear_failure(tx, name)
        moved = tx.execute("UPDATE projection_tracking SET position = ? WHERE name = ? AND position = ?",
                           (new_position, name, position))
        if moved != 1:
            raise LostRace(f"another runner advanced {name}")

    def _recovered(self, new_position: int) -> None:
        if self._failing:
            log.info("projection.recovered", projection=self.projection.name, position=new_position)
        self._failing = False
        self._advanced_at = time.monotonic()

    def catch_up(self, stop: int | None = None) -> int:
        """Process until no events are left (up to position ``stop`` when given, so that a
        replay ends exactly where a live projection stood); return the number processed."""
        total = 0
        while (n := self._batch(stop)) > 0:
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
            for statement in health.HEALTH_DDL:
                tx.execute(statement)
            self.projection.drop_tables(tx)
            tx.execute("DELETE FROM projection_tracking WHERE name = ?", (self.projection.name,))
            health.clear_failure(tx, self.projection.name)
        self.setup()
        return self.catch_up()

    # -- supervised loop ------------------------------------------------------------------------
    @property
    def recoverable(self) -> tuple[type[BaseException], ...]:
        return (*self.views.transient_errors, EsOperationalError, PersistenceError, LostRace, OSError)

    def run(self, stop: threading.Event, standby_s: float = 1.0) -> None:
        beating = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True,
                                   name=f"heartbeat-{self.projection.name}")
        beating.start()
        while not stop.is_set():
            try:
                if not self.lock.acquire():
                    stop.wait(standby_s)
                    continue
                self.setup()
                if not self.active.is_set():
                    self.active.set()
                    self.progress_at = time.time()
                    self._beat()
                self._follow(stop)
            except Exception as exc:  # noqa: BLE001 - a runner never dies: every error is handled below
                self.errors += 1
                if self._transient(exc):
                    self._recover(exc, stop)
                else:
                    self._on_failure(exc)
        self.active.clear()
        self._release_quietly()
        beating.join(self.heartbeat_s + 1)

    def _follow(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self._retry_in_s > 0:
                self._wait_retry(stop)
                continue
            read = self.process_batch()
            self.progress_at = time.time()
            self._backoff_s = 0.1
            if read == 0:
                self.lock.wait_for_events(self.poll_s)

    def _transient(self, exc: Exception) -> bool:
        """A lost connection (reconnect and go on), unless it keeps failing on the same event."""
        if not isinstance(exc, self.recoverable):
            return False
        if self.failed_event is None:
            return True
        position = self.failed_event[0]
        count = self._streak[1] + 1 if self._streak[0] == position else 1
        self._streak = (position, count)
        return count < TRANSIENT_TRIES

    def _recover(self, exc: Exception, stop: threading.Event) -> None:
        log.warning("projection.recovering", projection=self.projection.name, error=repr(exc),
                    backoff_s=self._backoff_s)
        self.active.clear()
        self._release_quietly()
        stop.wait(self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, 5.0)

    def _on_failure(self, exc: Exception) -> None:
        """Record the failure (shared, durable), log it, and back off before the retry."""
        name, failed = self.projection.name, self.failed_event
        if failed is not None and failed[1] > 0:
            try:
                self._batch(stop=failed[0] - 1)  # the events before the failing one are fine
            except Exception as prefix_exc:  # noqa: BLE001 - the failure below is what matters
                log.warning("projection.prefix_failed", projection=name, error=repr(prefix_exc))
        position = None if failed is None else failed[0]
        try:
            failure = health.record_failure(self.views, name, position, exc)
            self._failing, self._retry_in_s = True, max(0.0, (failure.retry_at or 0) - failure.last_failed_at)
            attempt = failure.attempts
        except Exception as record_exc:  # noqa: BLE001 - the store may be down: log, back off anyway
            log.warning("projection.failure_not_recorded", projection=name, error=repr(record_exc))
            self._retry_in_s, attempt = health.retry_delay_s(1), 0
        log.error("projection.failed", projection=name, event_position=position, error_type=type(exc).__name__,
                  error=str(exc)[:health.MESSAGE_MAX], attempt=attempt, retry_in_s=self._retry_in_s,
                  exc_info=exc if attempt <= 1 else None)  # the traceback once per failure, not per retry

    def _wait_retry(self, stop: threading.Event) -> None:
        """Sit out the backoff, holding the lock; an operator's resume cuts it short."""
        left = self._retry_in_s
        while left > 0 and not stop.is_set():
            chunk = min(left, self.resume_poll_s)
            stop.wait(chunk)
            left -= chunk
            failure = health.read_failure(self.views, self.projection.name)
            if failure is None or not failure.failing:
                log.info("projection.resumed", projection=self.projection.name)
                break
        self._retry_in_s = 0.0

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            if self.active.is_set():
                self._beat()

    def _beat(self) -> None:
        try:
            health.beat(self.views, self.projection.name, self.holder, self.progress_at)
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat is what the watchdog reports
            log.debug("projection.heartbeat_failed", projection=self.projection.name, error=repr(exc))

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
