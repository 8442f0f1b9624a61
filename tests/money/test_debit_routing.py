"""Debits routed to one owning process per channel (Redis membership + forwarding).

Two runtimes on one PostgreSQL schema stand for two API processes: each debit may arrive at
either, is forwarded to the channel's owner, and the owners' batches never race on a channel.
If an owner stops answering, the receiving process records the debit itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import pytest
from falcon import testing
from falcon.util import async_to_sync

from api.app import create_app
from ops.bootstrap import build_runtime
from ops.debit_routing import RedisDebitRouter
from tests.money.conftest import debit, open_card_channel, person
from tests.stubs import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET


@pytest.fixture
def two_processes(make_settings, redis_server, stripe_stub):
    schema = f"t_{uuid.uuid4().hex[:12]}"
    namespace = f"aimarket:test:{uuid.uuid4().hex[:8]}"
    runtimes = []
    for _ in range(2):
        settings = make_settings("postgres", db_schema=schema, redis_url=redis_server,
                                 stripe_api_key=DEFAULT_API_KEY, stripe_webhook_secret=DEFAULT_WEBHOOK_SECRET,
                                 stripe_api_base=stripe_stub.url)
        rt = build_runtime(settings)
        batcher = rt.debit_batcher
        batcher.router = RedisDebitRouter(redis_server, namespace, heartbeat_s=0.1, member_ttl_s=1.0,
                                          forward_wait_s=1.0)
        _on_test_loop(batcher.join_routing)
        runtimes.append(rt)
    deadline = time.monotonic() + 5
    while any(len(rt.debit_batcher.router._members) < 2 for rt in runtimes):
        assert time.monotonic() < deadline, "the two processes never saw each other"
        time.sleep(0.05)
    yield runtimes, [testing.TestClient(create_app(runtime=rt)) for rt in runtimes]
    for rt in runtimes:
        rt.close()


def _on_test_loop(fn):
    async def call():
        return fn()

    return async_to_sync(call)


def test_debits_go_to_one_owner_per_channel_without_races(two_processes, stripe_stub) -> None:
    (rt_a, rt_b), (a, b) = two_processes
    buyer, seller = person(a, ["buyer"]), person(a, ["seller"])
    channels = [open_card_channel(a, stripe_stub, buyer, 100_000)[0] for _ in range(8)]
    owners = {rt_a.debit_batcher.router.owner_of(c) for c in channels}
    assert owners == {rt_a.debit_batcher.router.me, rt_b.debit_batcher.router.me}  # both own some
    acknowledged: dict[str, int] = defaultdict(int)

    async def client_loop(n: int, conductors) -> None:
        for i in range(8):
            channel_id = channels[(n + i) % len(channels)]
            key = f"c{n}-{i}"
            r = await debit(conductors[(n + i) % 2], buyer, channel_id, seller["id"], 3, key=key)
            assert r.status_code == 201, r.json
            again = await debit(conductors[(n + i + 1) % 2], buyer, channel_id, seller["id"], 3, key=key)  # the other
            assert again.status_code == 201 and again.json == r.json
            acknowledged[channel_id] += 3

    async def main() -> None:
        async with testing.ASGIConductor(a.app) as ca, testing.ASGIConductor(b.app) as cb:
            await asyncio.gather(*(client_loop(n, (ca, cb)) for n in range(24)))

    async_to_sync(main)
    for channel_id in channels:
        view = a.simulate_get(f"/v1/channels/{channel_id}", headers=buyer["headers"]).json
        assert view["spent_minor"] == acknowledged[channel_id]
    for rt in (rt_a, rt_b):
        assert rt.debit_batcher.router.forwarded > 0 and rt.debit_batcher.router.served > 0
        assert rt.debit_batcher.conflicts == 0  # one writer per channel: no version races
        assert rt.debit_batcher.forward_fallbacks == 0

    # An error found by the owner comes back with its own code and status.
    remote = next(c for c in channels if rt_a.debit_batcher.router.owner_of(c) != rt_a.debit_batcher.router.me)
    r = debit(a, buyer, remote, seller["id"], 10**9)
    assert r.status_code == 402 and r.json["code"] == "channel_exhausted"
    assert r.headers["content-type"].startswith("application/problem+json")


def test_owner_that_stops_answering_is_bypassed(two_processes, stripe_stub) -> None:
    (rt_a, rt_b), (a, _b) = two_processes
    buyer, seller = person(a, ["buyer"]), person(a, ["seller"])
    channels = [open_card_channel(a, stripe_stub, buyer, 1_000)[0] for _ in range(6)]
    router_a, router_b = rt_a.debit_batcher.router, rt_b.debit_batcher.router
    remote = [c for c in channels if router_a.owner_of(c) == router_b.me]
    assert remote
    # B dies without leaving: its threads stop, its membership lingers until it expires.
    router_b._stop.set()
    router_b._outbox.put(("", "", None))
    router_b._threads[0].join(timeout=1)  # the listener: B reads its inbox no more
    started = time.monotonic()
    r = debit(a, buyer, remote[0], seller["id"], 5, key="k-orphan")
    assert r.status_code == 201, r.json
    assert rt_a.debit_batcher.forward_fallbacks == 1 and time.monotonic() - started >= 0.9
    assert debit(a, buyer, remote[0], seller["id"], 5, key="k-orphan").json == r.json
    time.sleep(1.2)  # B's membership expired: A owns everything and answers at once
    assert router_a.owner_of(remote[0]) == router_a.me
    r = debit(a, buyer, remote[0], seller["id"], 5)
    assert r.status_code == 201 and rt_a.debit_batcher.forward_fallbacks == 1
    view = a.simulate_get(f"/v1/channels/{remote[0]}", headers=buyer["headers"]).json
    assert view["spent_minor"] == 10
