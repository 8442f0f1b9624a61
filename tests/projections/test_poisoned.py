"""A projection never dies silently: a poisoned event, a hung runner and a vanished runner are
recorded and reported (``/readyz``, ``/metrics``, ``aimarket audit verify``, ``aimarket
projections status``) within seconds, on SQLite and PostgreSQL; after the fix, ``resume``
retries at once and the projection catches up with every event applied exactly once."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
from falcon import testing

from api.app import create_app
from domain.model.index import Index
from ops import cli
from ops.bootstrap import build_runtime, make_runner
from projections import health
from projections.audit_log import AuditLog
from projections.devices import Devices

META = {"actor": "test", "correlation_id": "c", "causation_id": ""}


class PoisonedAuditLog(AuditLog):
    """The audit log, whose handler raises for one chosen event while ``poison`` names it."""

    def __init__(self) -> None:
        self.poison: int | None = None

    def process(self, event: Any, tx: Any, position: int) -> None:
        if position == self.poison:
            raise RuntimeError(f"poisoned event {position}")
        super().process(event, tx, position)


class HangingRecorder:
    """The event store as one runner sees it: reads block while ``gate`` is closed."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self.gate = threading.Event()
        self.gate.set()

    def max_notification_id(self) -> int | None:
        self.gate.wait()
        return self.recorder.max_notification_id()

    def select_notifications(self, *args: Any, **kwargs: Any) -> Any:
        return self.recorder.select_notifications(*args, **kwargs)


def append(runtime, n: int) -> list[int]:
    for _ in range(n):
        runtime.market.save(Index(id=uuid.uuid4(), meta=META, kind="test", target_id="x"))
    head = runtime.market.recorder.max_notification_id()
    return list(range(head - n + 1, head + 1))


def wait_until(predicate, timeout_s: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout_s} s")


def start(runner) -> tuple[threading.Thread, threading.Event]:
    runner.poll_s, runner.heartbeat_s, runner.resume_poll_s = 0.1, 0.2, 0.1
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def halt(thread: threading.Thread, stop: threading.Event) -> None:
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def metric(client, name: str, projection: str = "audit_log") -> float | None:
    resp = client.simulate_get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    for line in resp.text.splitlines():
        if line.startswith(f'{name}{{projection="{projection}"}} '):
            return float(line.split()[-1])
    return None


def stalled_readyz(client, state: str) -> dict | None:
    resp = client.simulate_get("/readyz")
    if resp.status_code != 503 or resp.json["code"] != "projection_stalled":
        return None
    named = [p for p in resp.json["projections"] if p["name"] == "audit_log" and p["state"] == state]
    return {**resp.json, "audit_log": named[0]} if named else None


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().out


@pytest.fixture
def cli_env(monkeypatch, make_settings, store):
    """A runtime and the environment that makes the CLI open the same stores."""
    settings = make_settings(store)
    runtime = build_runtime(settings)
    monkeypatch.setenv("AIMARKET_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("AIMARKET_SECRET", settings.secret_hex)
    monkeypatch.setenv("AIMARKET_BCRYPT_ROUNDS", "4")
    if store == "postgres":
        monkeypatch.setenv("AIMARKET_DATABASE_URL", settings.database_url)
        monkeypatch.setenv("AIMARKET_DB_SCHEMA", settings.db_schema)
    yield runtime
    runtime.close()


def test_a_poisoned_event_is_reported_everywhere_and_resume_catches_up_exactly_once(
        cli_env, capsys, monkeypatch) -> None:
    runtime = cli_env
    client = testing.TestClient(create_app(runtime))
    projection = PoisonedAuditLog()
    runner = make_runner(runtime, projection)
    runner.batch_size = 4
    positions = append(runtime, 3)
    positions += append(runtime, 7)
    poison = projection.poison = positions[5]  # the third event of the second batch
    monkeypatch.setattr(health, "RETRY_FIRST_S", 0.25)
    thread, stop = start(runner)
    try:
        ready = wait_until(lambda: stalled_readyz(client, "failing"), what="/readyz projection_stalled")
        assert ready["audit_log"]["event_position"] == poison and ready["audit_log"]["error_type"] == "RuntimeError"
        assert f"position {poison}" in ready["detail"]
        assert runner.position() == poison - 1  # the events before it in its batch committed
        wait_until(lambda: metric(client, "aimarket_projection_stalled") == 1.0, what="stalled metric")
        assert metric(client, "aimarket_projection_lag_positions") == positions[-1] - (poison - 1)
        assert metric(client, "aimarket_projection_position") == poison - 1
        assert metric(client, "aimarket_projection_failures_total") >= 1

        code, out = run_cli(["audit", "verify"], capsys)
        report = json.loads(out)
        assert code == 1 and not report["ok"] and report["projections"]["audit_log"]["state"] == "failing"
        assert report["problems"][0].startswith(f"projection audit_log: failing at event position {poison}")
        assert f"poisoned event {poison}" in report["problems"][0]
        code, out = run_cli(["projections", "status"], capsys)
        assert code == 1 and out.splitlines()[0].split()[:5] == ["name", "position", "head", "lag", "state"]
        line = next(row for row in out.splitlines() if row.startswith("audit_log"))
        assert line.split()[1:5] == [str(poison - 1), str(positions[-1]), str(positions[-1] - poison + 1), "failing"]
        assert f"@{poison} RuntimeError: poisoned event {poison}" in line

        # Retried with backoff (0.25 s, 0.5 s, ...), each attempt counted at the same event.
        failure = wait_until(lambda: (f := health.read_failure(runtime.views, "audit_log")) and f.attempts >= 3 and f)
        assert failure.event_position == poison and failure.failures_total >= 3
        assert failure.retry_at - failure.last_failed_at == pytest.approx(health.retry_delay_s(failure.attempts))
        monkeypatch.setattr(health, "RETRY_FIRST_S", 60.0)  # the next retry waits a minute
        failure = wait_until(lambda: (f := health.read_failure(runtime.views, "audit_log")) and f.attempts >= 4 and f)
        assert failure.retry_at - failure.last_failed_at == 60.0
    finally:
        halt(thread, stop)

    # The failure outlives the runner: a new one honours the recorded backoff.
    runner = make_runner(runtime, projection)
    thread, stop = start(runner)
    try:
        wait_until(runner.active.is_set, what="the new runner active")
        assert stalled_readyz(client, "failing")
        assert health.read_failure(runtime.views, "audit_log").attempts == failure.attempts
        assert runner.position() == poison - 1

        projection.poison = None  # the fix
        code, out = run_cli(["projections", "resume", "audit_log"], capsys)
        assert code == 0 and f"failure at event position {poison} cleared" in out
        wait_until(lambda: runner.lag() == 0, timeout_s=10, what="caught up after resume (not after 60 s)")
        rows = [r["position"] for r in runtime.views.fetchall("SELECT position FROM audit_events ORDER BY position")]
        log_positions = [n.id for n in runtime.market.recorder.select_notifications(start=1, limit=1000)]
        assert rows == log_positions == positions  # none skipped, none applied twice
        assert client.simulate_get("/readyz").status_code == 200
        wait_until(lambda: metric(client, "aimarket_projection_stalled") == 0.0, what="stalled metric cleared")
        assert metric(client, "aimarket_projection_failure_attempts") == 0.0
        assert metric(client, "aimarket_projection_failures_total") >= failure.failures_total
        assert run_cli(["audit", "verify"], capsys)[0] == 0
        assert run_cli(["projections", "status"], capsys)[0] == 0
        assert run_cli(["projections", "resume", "audit_log"], capsys)[1].endswith("nothing to resume\n")
    finally:
        halt(thread, stop)


def test_a_runner_that_hangs_is_reported_stuck(runtime, client, monkeypatch) -> None:
    monkeypatch.setattr(health, "STALL_AFTER_S", 1.0)
    runner = make_runner(runtime, AuditLog())
    hanging = runner.recorder = HangingRecorder(runtime.market.recorder)
    append(runtime, 2)
    thread, stop = start(runner)
    try:
        wait_until(lambda: runner.lag() == 0, what="caught up")
        hanging.gate.clear()  # the runner's next look at the log never returns
        append(runtime, 3)
        ready = wait_until(lambda: stalled_readyz(client, "stuck"), what="/readyz stuck")
        assert "holds the lock but has made no progress" in ready["detail"]
        assert metric(client, "aimarket_projection_stalled") == 1.0
        assert metric(client, "aimarket_projection_heartbeat_age_seconds") < 1.0  # alive, just not moving
        hanging.gate.set()
        wait_until(lambda: client.simulate_get("/readyz").status_code == 200, what="ready again")
        assert runner.lag() == 0
    finally:
        hanging.gate.set()
        halt(thread, stop)


def test_a_vanished_runner_is_reported_and_a_never_started_one_is_not(runtime, client, monkeypatch) -> None:
    monkeypatch.setattr(health, "STALL_AFTER_S", 1.0)
    append(runtime, 2)
    ready = client.simulate_get("/readyz")  # nothing has run yet: behind, but not stalled
    assert ready.status_code == 200 and ready.json["projections"]["audit_log"]["state"] == "waiting"
    runner = make_runner(runtime, AuditLog())
    thread, stop = start(runner)
    wait_until(lambda: runner.lag() == 0, what="caught up")
    halt(thread, stop)
    append(runtime, 1)
    ready = wait_until(lambda: stalled_readyz(client, "no_runner"), what="/readyz no_runner")
    assert "no runner has reported" in ready["detail"]


def test_a_projection_moves_past_events_it_does_not_handle(runtime) -> None:
    runner = make_runner(runtime, Devices())
    append(runtime, 3)
    assert runner.catch_up() == 0  # none of them is a device event
    assert runner.position() == runtime.market.recorder.max_notification_id() and runner.lag() == 0


def test_failure_records_back_off_and_resume_keeps_the_total(runtime) -> None:
    views, boom = runtime.views, RuntimeError("boom")
    first = health.record_failure(views, "audit_log", 7, boom, now=100.0)
    second = health.record_failure(views, "audit_log", 7, boom, now=101.0)
    assert (first.attempts, first.retry_at) == (1, 100.5)
    assert (second.attempts, second.retry_at, second.first_failed_at) == (2, 102.0, 100.0)
    assert [health.retry_delay_s(n) for n in (1, 2, 3, 8, 20)] == [0.5, 1.0, 2.0, 60.0, 60.0]
    moved = health.record_failure(views, "audit_log", 9, boom, now=102.0)  # a new event: a new streak
    assert (moved.attempts, moved.failures_total) == (1, 3)
    assert health.resume(views, "audit_log").event_position == 9
    cleared = health.read_failure(views, "audit_log")
    assert (cleared.attempts, cleared.failures_total, cleared.error_message) == (0, 3, "boom")
    assert health.resume(views, "audit_log") is None
