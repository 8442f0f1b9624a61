"""Jobs through the real Redis broker, consumed by a real Dramatiq worker."""

from __future__ import annotations

import uuid

import pytest
from dramatiq import Worker

from ops.adapters.broker import build_broker
from ops.bootstrap import build_runtime
from workers.jobs import Jobs


@pytest.mark.redis
def test_sweep_job_round_trips_through_redis(make_settings, redis_server) -> None:
    settings = make_settings("postgres", redis_url=redis_server)
    runtime = build_runtime(settings)
    runtime.nonces.use_once("expired", ttl_s=-1)
    runtime.nonces.use_once("fresh", ttl_s=3600)
    broker = build_broker(settings, namespace=f"aimarket-test-{uuid.uuid4().hex[:8]}")
    jobs = Jobs(broker, lambda: runtime)
    worker = Worker(broker, worker_timeout=100)
    worker.start()
    try:
        jobs.sweep_nonces.send()
        broker.join("maintenance", timeout=10_000)
        worker.join()
        rows = runtime.views.fetchall("SELECT nonce_key FROM used_nonces ORDER BY nonce_key")
        assert [r["nonce_key"] for r in rows] == ["fresh"]
    finally:
        worker.stop()
        broker.close()
        runtime.close()


def test_embedded_default_uses_the_in_process_broker(make_settings) -> None:
    from dramatiq.brokers.stub import StubBroker

    assert isinstance(build_broker(make_settings("sqlite")), StubBroker)


def test_cron_fires_once_across_hosts(make_settings, store) -> None:
    from workers.cron import Cron, Schedule

    runtime = build_runtime(make_settings(store))
    try:
        fired: list[str] = []
        now = {"s": 1000}
        host_a = Cron(runtime.views, [Schedule("job", 60, lambda: fired.append("a"))], clock_s=lambda: now["s"])
        host_b = Cron(runtime.views, [Schedule("job", 60, lambda: fired.append("b"))], clock_s=lambda: now["s"])
        assert host_a.tick() == ["job"] and host_b.tick() == []
        now["s"] += 30
        assert host_a.tick() == [] and host_b.tick() == []
        now["s"] += 30
        assert host_b.tick() == ["job"] and host_a.tick() == []
        assert fired == ["a", "b"]
    finally:
        runtime.close()
