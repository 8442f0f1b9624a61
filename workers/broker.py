"""The Dramatiq broker: Redis in production (shared by every host), in-process for the
embedded default. Actors are registered on an explicit broker (``workers.jobs``), so
importing a module never connects anywhere."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from ops.settings import Settings


def build_broker(settings: Settings, *, namespace: str = "aimarket") -> dramatiq.Broker:
    if settings.redis_url:
        broker: dramatiq.Broker = RedisBroker(url=settings.redis_url, namespace=namespace)
    else:
        broker = StubBroker()
        broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    return broker
