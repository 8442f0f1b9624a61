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
from ops.adapters.redis_routing import RedisDebitRouter
from ops.bootstrap import build_runtime
from tests.helpers import wait_until
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
        # A member is fresh for member_ttl_s - heartbeat_s: 3 s keeps a starved heartbeat thread
        # on a busy machine from making a live member look gone (and its process route locally).
        batcher.router = RedisDebitRouter(redis_server, namespace, heartbeat_s=0.1, member_ttl_s=3.0,
                                          forward_wait_s=1.0)
        _on_test_loop(batcher.join_routing)
        runtimes.append(rt)
    wait_until(lambda: all(len(rt.debit_batcher.router._members) == 2 for rt in runtimes), 10,
               what="the two processes seeing each other")
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
    for rt in (rt_a, rt_b):  # here every owner is alive: give a busy machine time to answer
        rt.debit_batcher.router.forward_wait_s = 30.0
    both = {rt_a.debit_batcher.router.me, rt_b.debit_batcher.router.me}
    channels: list[str] = []
    while len(channels) < 8 or {rt_a.debit_batcher.router.owner_of(c) for c in channels} != both:
        assert len(channels) < 40, "one process owns every channel"  # 8 random ids alone: 1 run in 128
        channels.append(open_card_channel(a, stripe_stub, buyer, 100_000)[0])
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
    router_a, router_b = rt_a.debit_batcher.router, rt_b.debit_batcher.router
    remote = open_card_channel(a, stripe_stub, buyer, 1_000)[0]
    for _ in range(40):  # each channel is B's with even odds
        if router_a.owner_of(remote) == router_b.me:
            break
        remote = open_card_channel(a, stripe_stub, buyer, 1_000)[0]
    assert router_a.owner_of(remote) == router_b.me
    # B dies without leaving: its threads stop, its membership lingers until it expires.
    router_b._stop.set()
    router_b._outbox.put(("", "", None))
    listener = router_b._threads[0]
    listener.join(timeout=10)
    assert not listener.is_alive()  # B reads its inbox no more
    # Its last heartbeat is now: the membership lingers member_ttl_s from here, however long the
    # join took on a busy machine, and A (re-reading Redis every heartbeat) routes to B.
    router_b._client.zadd(router_b._members_key, {router_b.me: time.time()})
    wait_until(lambda: router_a.owner_of(remote) == router_b.me, 10, what="A routing to the dead B")
    forwarded, served_by_b = router_a.forwarded, router_b.served
    started = time.monotonic()
    r = debit(a, buyer, remote, seller["id"], 5, key="k-orphan")
    assert r.status_code == 201, r.json
    # A forwarded it to B, got no answer within forward_wait_s and recorded the debit itself.
    assert router_a.forwarded == forwarded + 1 and router_b.served == served_by_b
    assert rt_a.debit_batcher.forward_fallbacks == 1
    assert time.monotonic() - started >= router_a.forward_wait_s * 0.9
    # B's membership expires: the members A reads from Redis no longer hold B, so A owns everything.
    wait_until(lambda: router_b.me not in router_a._members, 10, what="B's membership expiring")
    assert router_a.owner_of(remote) == router_a.me
    forwarded = router_a.forwarded
    assert debit(a, buyer, remote, seller["id"], 5, key="k-orphan").json == r.json  # the key replays it
    r = debit(a, buyer, remote, seller["id"], 5)
    assert r.status_code == 201, r.json
    # Answered by A at once: nothing forwarded, no further fallback.
    assert router_a.forwarded == forwarded and rt_a.debit_batcher.forward_fallbacks == 1
    view = a.simulate_get(f"/v1/channels/{remote}", headers=buyer["headers"]).json
    assert view["spent_minor"] == 10
