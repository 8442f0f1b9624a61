"""The projection machinery, on the embedded SQLite store and on real PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from domain.model.index import Index
from ops.bootstrap import build_runtime, make_runner
from projections.audit_log import AuditLog
from tests.conftest import pg_conninfo

META = {"actor": "test", "correlation_id": "c", "causation_id": ""}


def append(runtime, n: int) -> None:
    for _ in range(n):
        runtime.market.save(Index(id=uuid.uuid4(), meta=META, kind="test", target_id="x"))


def audit_rows(runtime) -> list[dict]:
    return runtime.views.fetchall("SELECT position FROM audit_events ORDER BY position")


def wait_until(predicate, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_stop_append_restart_catches_up_exactly_once(runtime) -> None:
    runner = make_runner(runtime, AuditLog())
    append(runtime, 5)
    assert runner.catch_up() == 5
    # stopped: more events arrive
    append(runtime, 7)
    restarted = make_runner(runtime, AuditLog())
    restarted.setup()
    assert restarted.catch_up() == 7
    assert restarted.catch_up() == 0
    positions = [r["position"] for r in audit_rows(runtime)]
    assert len(positions) == 12 == len(set(positions))
    assert restarted.position() == runtime.market.recorder.max_notification_id()


def test_batch_and_tracking_commit_together(runtime) -> None:
    """A handler that fails mid-batch leaves neither rows nor tracking behind."""
    runner = make_runner(runtime, AuditLog())
    runner.batch_size = 3
    append(runtime, 3)
    calls = {"n": 0}
    original = runner.projection.process

    def flaky(event, tx, position):
        calls["n"] += 1
        original(event, tx, position)
        if calls["n"] == 2:
            raise RuntimeError("crash mid-batch")

    runner.projection.process = flaky  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        runner.process_batch()
    assert audit_rows(runtime) == [] and runner.position() == 0
    runner.projection.process = original  # type: ignore[method-assign]
    assert runner.catch_up() == 3
    assert len(audit_rows(runtime)) == 3


def test_rebuild_from_zero_in_batches(runtime) -> None:
    runner = make_runner(runtime, AuditLog())
    runner.batch_size = 4
    append(runtime, 10)
    runner.catch_up()
    before = audit_rows(runtime)
    assert runner.rebuild() == 10
    assert audit_rows(runtime) == before


def test_version_bump_rebuilds(runtime) -> None:
    append(runtime, 3)
    runner = make_runner(runtime, AuditLog())
    runner.catch_up()

    class AuditLogV2(AuditLog):
        version = 2

    bumped = make_runner(runtime, AuditLogV2())
    bumped.setup()
    assert bumped.position() == 0
    assert bumped.catch_up() == 3


def test_supervised_runner_follows_new_events(runtime) -> None:
    runner = make_runner(runtime, AuditLog())
    runner.poll_s = 0.1
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        append(runtime, 4)
        wait_until(lambda: len(audit_rows(runtime)) == 4)
        append(runtime, 2)
        wait_until(lambda: len(audit_rows(runtime)) == 6)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_only_one_runner_is_active(make_settings, store) -> None:
    settings = make_settings(store)
    a, b = build_runtime(settings), build_runtime(settings)
    try:
        first, second = make_runner(a, AuditLog()), make_runner(b, AuditLog())
        assert first.lock.acquire() is True
        assert second.lock.acquire() is False
        first.lock.release()
        assert second.lock.acquire() is True
        second.lock.release()
    finally:
        a.close()
        b.close()


def test_compare_and_set_tracking_refuses_a_second_writer(runtime) -> None:
    append(runtime, 2)
    first, second = make_runner(runtime, AuditLog()), make_runner(runtime, AuditLog())
    first.batch_size = second.batch_size = 1
    second.setup()
    # both read position 0; the first commits; the second's batch must not apply twice
    assert first.process_batch() == 1
    runtime.views.fetchall("SELECT 1 AS x")
    assert second.process_batch() == 1  # it re-reads the tracked position inside its transaction
    positions = [r["position"] for r in audit_rows(runtime)]
    assert len(positions) == len(set(positions)) == 2


@pytest.mark.postgres
def test_runner_recovers_when_its_connections_are_killed(make_settings) -> None:
    settings = make_settings("postgres")
    runtime = build_runtime(settings)
    runner = make_runner(runtime, AuditLog())
    runner.poll_s = 0.1
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        append(runtime, 3)
        wait_until(lambda: len(audit_rows(runtime)) == 3)
        killed = kill_backends()
        assert killed > 0
        append(runtime, 4)
        wait_until(lambda: len(audit_rows(runtime)) == 7, timeout_s=30)
        assert runner.errors >= 1  # it noticed, backed off and came back
        positions = [r["position"] for r in audit_rows(runtime)]
        assert len(positions) == len(set(positions)) == 7
    finally:
        stop.set()
        thread.join(10)
        runtime.close()


def kill_backends() -> int:
    """Terminate every other session of this database (the runner's lock, LISTEN and pools)."""
    with psycopg.connect(pg_conninfo(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        ).fetchall()
    return len(rows)
