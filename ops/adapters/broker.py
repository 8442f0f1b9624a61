"""Adapter: the Dramatiq broker, Redis in production (shared by every host) and in-process
for the embedded default; and the settlement queue for processes that do not run actors.
Actors are registered on an explicit broker (``workers.jobs``), so importing a module never
connects anywhere."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from ops.settings import Settings
from workers import settlement


def build_broker(settings: Settings, *, namespace: str = "aimarket") -> dramatiq.Broker:
    if settings.redis_url:
        broker: dramatiq.Broker = RedisBroker(url=settings.redis_url, namespace=namespace)
    else:
        broker = StubBroker()
        broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    return broker


def settlement_sender(redis_url: str, namespace: str = "aimarket") -> Callable[[str], None]:
    """``send(channel_id)``: queue ``settle_channel`` from a process that does not run the
    actor (the API, when a buyer closes a channel); a worker host picks it up at once. The
    broker connects on the first send. The sweep remains the safety net if this is lost."""
    declared: list[dramatiq.Actor] = []

    def send(channel_id: str) -> None:
        if not declared:  # the actor's declaration only: this process never runs it
            broker = RedisBroker(url=redis_url, namespace=namespace)
            declared.append(dramatiq.actor(lambda channel_id: None, broker=broker,
                                           actor_name=settlement.SETTLE_ACTOR, queue_name=settlement.SETTLE_QUEUE))
        declared[0].send(channel_id)

    return send
