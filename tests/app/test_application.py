"""Application-level behaviour: bounded retries on lost races, request ids as correlation,
the audit walk, settings errors."""

from __future__ import annotations

import pytest
from eventsourcing.persistence import IntegrityError

from domain.model.errors import Conflict
from ops.audit import verify_log
from ops.bootstrap import platform_secret
from ops.settings import Settings, SettingsError, load_settings
from tests.helpers import register


def test_lost_races_retry_then_answer_conflict(runtime) -> None:
    attempts = {"n": 0}

    def always_loses() -> None:
        attempts["n"] += 1
        raise IntegrityError("version conflict")

    with pytest.raises(Conflict) as info:
        runtime.market.retrying(always_loses, attempts=4)
    assert attempts["n"] == 4 and info.value.status == 409


def test_lost_race_then_success_on_fresh_state(runtime) -> None:
    attempts = {"n": 0}

    def wins_second_time() -> str:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise IntegrityError("version conflict")
        return "ok"

    assert runtime.market.retrying(wins_second_time) == "ok"


def test_request_id_is_echoed_and_becomes_the_correlation_id(client, runtime) -> None:
    r = client.simulate_post("/v1/accounts", json={"email": "corr@example.com", "password": "long enough pw"},
                             headers={"X-Request-Id": "req-12345678"})
    assert r.status_code == 201 and r.headers["X-Request-Id"] == "req-12345678"
    events = [runtime.market.mapper.to_domain_event(n)
              for n in runtime.market.recorder.select_notifications(start=None, limit=100)]
    assert {e.meta["correlation_id"] for e in events} == {"req-12345678"}
    assert {e.meta["actor"] for e in events} == {"anonymous"}
    bad = client.simulate_get("/v1/me", headers={"X-Request-Id": "bad id with spaces"})
    assert bad.json["request_id"] == bad.headers["X-Request-Id"] != "bad id with spaces"


def test_audit_verify_walks_the_whole_log(client, runtime) -> None:
    for _ in range(3):
        register(client)
    report = verify_log(runtime.market)
    assert report["ok"] and report["events"] == 6 and report["streams"] == 6


def test_settings_errors_are_clear(tmp_path) -> None:
    with pytest.raises(SettingsError, match="AIMARKET_BCRYPT_ROUNDS"):
        load_settings({"AIMARKET_BCRYPT_ROUNDS": "many"})
    with pytest.raises(SettingsError, match="AIMARKET_DB_SCHEMA"):
        load_settings({"AIMARKET_DB_SCHEMA": "Robert'); DROP"})
    with pytest.raises(SettingsError, match="AIMARKET_SECRET"):
        platform_secret(Settings(secret_hex="abcd"))
    with pytest.raises(SettingsError, match="required with PostgreSQL"):
        platform_secret(Settings(database_url="postgresql://root@127.0.0.1/test"))
    embedded = Settings(data_dir=tmp_path / "d")
    secret = platform_secret(embedded)
    assert platform_secret(embedded) == secret and len(secret) == 32
    assert (tmp_path / "d" / "platform.secret").stat().st_mode & 0o777 == 0o600


def test_many_processes_can_start_on_a_new_schema_at_once(make_settings) -> None:
    """Gunicorn workers and hosts start together: table creation must not race."""
    import threading

    from ops.bootstrap import build_runtime

    settings = make_settings("postgres")
    errors: list[BaseException] = []
    runtimes = []

    def start() -> None:
        try:
            runtimes.append(build_runtime(settings))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rt in runtimes:
        rt.close()
    assert not errors, errors


def _boot_embedded(data_dir, barrier, results) -> None:
    from ops.bootstrap import build_runtime

    barrier.wait()
    try:
        build_runtime(Settings(data_dir=data_dir, bcrypt_rounds=4)).close()
        results.put(None)
    except Exception as exc:
        results.put(repr(exc))


def test_web_workers_can_open_a_new_embedded_store_at_once(tmp_path) -> None:
    """`aimarket serve` on a new data dir: gunicorn forks the workers and each creates the
    SQLite stores at the same moment. Two first connections both switch the new file to WAL
    and SQLite fails the loser at once ("database is locked"), so a worker failed to boot
    and gunicorn halted the hub; boot is now serialised by a file lock."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # like gunicorn: everything imported, then fork
    for attempt in range(6):
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_boot_embedded, args=(tmp_path / f"d{attempt}", barrier, results))
                 for _ in range(4)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
        assert outcomes == [None] * 4, outcomes


def test_workers_starting_together_share_one_platform_secret(tmp_path) -> None:
    """Every web worker makes the secret on a new data dir at the same moment: one wins, all
    read it, none sees a half-written file or fails."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    for attempt in range(5):
        settings = Settings(data_dir=tmp_path / f"d{attempt}")
        barrier = threading.Barrier(12)

        def start(_: int, settings: Settings = settings, barrier: threading.Barrier = barrier) -> bytes:
            barrier.wait()
            return platform_secret(settings)

        with ThreadPoolExecutor(12) as pool:
            secrets = list(pool.map(start, range(12)))
        assert len(set(secrets)) == 1 and len(secrets[0]) == 32
        assert sorted(p.name for p in settings.data_dir.iterdir()) == ["platform.secret"]  # no temp files left
