"""Projection health: handler failures, runner heartbeats, and the one status every reporter reads.

Two tables in the read-model database (shared by every host, kept across restarts):

* ``projection_failures``, one row per projection: the current failure (``attempts`` > 0:
  the event position that failed, the error's type and message, when the next retry is
  due) and ``failures_total`` over the projection's life. The runner writes it when a batch
  fails and clears ``attempts`` in the transaction that finally moves past the event;
  ``aimarket projections resume NAME`` clears it too, so the runner retries at once.
* ``projection_runners``, one row per projection: which runner holds the lock (host:pid),
  its last heartbeat and the last time it made progress (a committed batch, or a look at
  the log that found nothing new). A heartbeat thread writes it every ``HEARTBEAT_S``.

:func:`read_health` turns both, the tracking row and the log's head into a state per
projection; ``/readyz``, ``/metrics``, ``aimarket audit verify`` and ``aimarket projections
status`` all read it, so they always agree.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from domain.model.ports import Tx, ViewDB
from projections.registry import all_projections

STALL_AFTER_S = 30.0  # behind, and no progress (or no heartbeat) for this long: stalled
HEARTBEAT_S = 2.0
RETRY_FIRST_S = 0.5  # handler-failure backoff: 0.5 s doubling, at most 60 s
RETRY_MAX_S = 60.0
MESSAGE_MAX = 2000

HEALTH_DDL = (
    "CREATE TABLE IF NOT EXISTS projection_failures ("
    " name TEXT PRIMARY KEY, failures_total BIGINT NOT NULL, attempts INTEGER NOT NULL, event_position BIGINT,"
    " error_type TEXT NOT NULL, error_message TEXT NOT NULL, first_failed_at DOUBLE PRECISION NOT NULL,"
    " last_failed_at DOUBLE PRECISION NOT NULL, retry_at DOUBLE PRECISION)",
    "CREATE TABLE IF NOT EXISTS projection_runners ("
    " name TEXT PRIMARY KEY, holder TEXT NOT NULL, heartbeat_at DOUBLE PRECISION NOT NULL,"
    " progress_at DOUBLE PRECISION NOT NULL)",
)

# States; every one but "ok", "catching_up" and "waiting" counts as stalled.
OK, CATCHING_UP, WAITING, FAILING, STUCK, NO_RUNNER = "ok", "catching_up", "waiting", "failing", "stuck", "no_runner"
STALLED_STATES = (FAILING, STUCK, NO_RUNNER)


def retry_delay_s(attempts: int) -> float:
    """How long to wait before retry number ``attempts`` + 1 (0.5 s, 1 s, 2 s, ... 60 s)."""
    return min(RETRY_FIRST_S * 2 ** max(attempts - 1, 0), RETRY_MAX_S)


@dataclass(frozen=True)
class Failure:
    """A projection's failure record; ``attempts`` > 0 while it is failing."""

    attempts: int
    event_position: int | None  # None: the runner failed outside a handler
    error_type: str
    error_message: str
    failures_total: int
    first_failed_at: float
    last_failed_at: float
    retry_at: float | None

    @property
    def failing(self) -> bool:
        return self.attempts > 0


def _failure(row: dict[str, Any] | None) -> Failure | None:
    if row is None:
        return None
    position = row["event_position"]
    return Failure(int(row["attempts"]), None if position is None else int(position), row["error_type"],
                   row["error_message"], int(row["failures_total"]), float(row["first_failed_at"]),
                   float(row["last_failed_at"]), None if row["retry_at"] is None else float(row["retry_at"]))


def read_failure(db: Tx | ViewDB, name: str) -> Failure | None:
    return _failure(db.fetchone("SELECT * FROM projection_failures WHERE name = ?", (name,)))


def record_failure(views: ViewDB, name: str, event_position: int | None, exc: BaseException,
                   now: float | None = None) -> Failure:
    """Count one more failure; a failure at the same position continues the backoff."""
    now = time.time() if now is None else now
    message = str(exc)[:MESSAGE_MAX]
    with views.transaction() as tx:
        old = read_failure(tx, name)
        same = old is not None and old.failing and old.event_position == event_position
        attempts = old.attempts + 1 if same and old else 1
        first = old.first_failed_at if same and old else now
        total = (old.failures_total if old else 0) + 1
        retry_at = now + retry_delay_s(attempts)
        tx.execute(
            "INSERT INTO projection_failures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " failures_total = excluded.failures_total, attempts = excluded.attempts,"
            " event_position = excluded.event_position, error_type = excluded.error_type,"
            " error_message = excluded.error_message, first_failed_at = excluded.first_failed_at,"
            " last_failed_at = excluded.last_failed_at, retry_at = excluded.retry_at",
            (name, total, attempts, event_position, type(exc).__name__, message, first, now, retry_at))
    return Failure(attempts, event_position, type(exc).__name__, message, total, first, now, retry_at)


def clear_failure(tx: Tx, name: str) -> int:
    """End the current failure (the last error and the total stay for the record)."""
    return tx.execute("UPDATE projection_failures SET attempts = 0, retry_at = NULL WHERE name = ? AND attempts > 0",
                      (name,))


def resume(views: ViewDB, name: str) -> Failure | None:
    """The operator's resume: clear the failure so the runner retries now; None if none was recorded.

    Never moves the tracked position: the failed event is applied next, or fails again."""
    with views.transaction() as tx:
        failure = read_failure(tx, name)
        if failure is not None and failure.failing:
            clear_failure(tx, name)
    return failure if failure is not None and failure.failing else None


def beat(views: ViewDB, name: str, holder: str, progress_at: float, now: float | None = None) -> None:
    """The active runner's heartbeat."""
    now = time.time() if now is None else now
    with views.transaction() as tx:
        tx.execute("INSERT INTO projection_runners VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                   " holder = excluded.holder, heartbeat_at = excluded.heartbeat_at,"
                   " progress_at = excluded.progress_at", (name, holder, now, progress_at))


# -- status -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Health:
    """One projection as reporters see it."""

    name: str
    position: int
    head: int
    state: str
    detail: str
    failure: Failure | None
    holder: str | None
    heartbeat_age_s: float | None
    progress_age_s: float | None

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)

    @property
    def stalled(self) -> bool:
        return self.state in STALLED_STATES

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(lag=self.lag, stalled=self.stalled)
        return out


def projection_names() -> list[str]:
    return [p.name for p in all_projections()]


def read_health(views: ViewDB, head: int, names: list[str] | None = None, *, now: float | None = None,
                stall_after_s: float | None = None) -> list[Health]:
    """Each projection's state against the log's ``head`` (read by the caller, before this)."""
    now = time.time() if now is None else now
    stall_after_s = STALL_AFTER_S if stall_after_s is None else stall_after_s
    rows = views.fetchall(
        "SELECT t.name, t.position, f.attempts, f.event_position, f.error_type, f.error_message, f.failures_total,"
        " f.first_failed_at, f.last_failed_at, f.retry_at, r.holder, r.heartbeat_at, r.progress_at"
        " FROM projection_tracking t LEFT JOIN projection_failures f ON f.name = t.name"
        " LEFT JOIN projection_runners r ON r.name = t.name")
    by_name = {row["name"]: row for row in rows}
    out = []
    for name in projection_names() if names is None else names:
        row = by_name.get(name) or {"name": name, "position": 0, "attempts": None, "holder": None}
        out.append(_diagnose(row, head, now, stall_after_s))
    return out


def _age(now: float, at: Any) -> float | None:
    return None if at is None else max(0.0, now - float(at))


def _diagnose(row: dict[str, Any], head: int, now: float, stall_after_s: float) -> Health:
    name, position = row["name"], int(row["position"])
    failure = _failure(row) if row["attempts"] is not None else None
    beat_age, progress_age = _age(now, row.get("heartbeat_at")), _age(now, row.get("progress_at"))
    behind = head > position
    if failure is not None and failure.failing:
        state, detail = FAILING, _failing_detail(name, position, failure, now)
    elif not behind:
        state, detail = OK, f"{name}: at the head ({position})"
    elif beat_age is None:
        state, detail = WAITING, f"{name}: {head - position} positions behind, no runner has reported yet"
    elif beat_age > stall_after_s:
        state, detail = NO_RUNNER, (f"{name}: no runner has reported for {beat_age:.0f} s while behind"
                                    f" (position {position}, head {head}): is `aimarket worker` running,"
                                    " or does its runner hang?")
    elif progress_age is not None and progress_age > stall_after_s:
        state, detail = STUCK, (f"{name}: runner {row['holder']} holds the lock but has made no progress for"
                                f" {progress_age:.0f} s (position {position}, head {head}): a handler or a"
                                " database lock may hang")
    else:
        state, detail = CATCHING_UP, f"{name}: catching up ({position} of {head})"
    return Health(name, position, head, state, detail, failure, row.get("holder"), beat_age, progress_age)


def _failing_detail(name: str, position: int, failure: Failure, now: float) -> str:
    where = (f"at event position {failure.event_position}" if failure.event_position is not None
             else f"after position {position}, outside a handler")
    retry = "" if failure.retry_at is None else f", next retry in {max(0.0, failure.retry_at - now):.0f} s"
    return (f"{name}: failing {where} ({failure.error_type}), attempt {failure.attempts}{retry}; fix the cause,"
            f" then `aimarket projections resume {name}`")


def status_table(health: list[Health]) -> str:
    """``aimarket projections status``: one line per projection."""
    header = ("name", "position", "head", "lag", "state", "attempts", "last error")
    lines = [header]
    for h in health:
        error = "" if h.failure is None else f"{h.failure.error_type}: {h.failure.error_message}"
        if h.failure is not None and h.failure.event_position is not None:
            error = f"@{h.failure.event_position} {error}"
        attempts = str(h.failure.attempts) if h.failure is not None else "0"
        lines.append((h.name, str(h.position), str(h.head), str(h.lag), h.state, attempts,
                      error.replace("\n", " ")[:120]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = ["  ".join([*(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)), line[-1]]).rstrip()
            for line in lines]
    text += [f"  {h.detail}" for h in health if h.state != OK]
    return "\n".join(text)
