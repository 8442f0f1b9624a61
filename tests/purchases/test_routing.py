"""Purchases are routed like debits: a purchase arriving at another process than its
channel's owner is checked there, forwarded, recorded by the owner, and answered back."""

from __future__ import annotations

import uuid

import pytest
from falcon import testing

from api.app import create_app
from ops.adapters.redis_routing import RedisDebitRouter
from ops.bootstrap import build_runtime
from tests.helpers import wait_until
from tests.money.test_debit_routing import _on_test_loop
from tests.purchases.conftest import shop_settings
from tests.purchases.shop import Shop


@pytest.fixture
def routed(make_settings, redis_server, stripe_stub):
    schema, namespace = f"t_{uuid.uuid4().hex[:12]}", f"aimarket:test:{uuid.uuid4().hex[:8]}"
    shops = []
    for _ in range(2):
        rt = build_runtime(shop_settings(make_settings, "postgres", stripe_stub, db_schema=schema,
                                         redis_url=redis_server))
        rt.debit_batcher.router = RedisDebitRouter(redis_server, namespace, heartbeat_s=0.1, member_ttl_s=3.0,
                                                   forward_wait_s=30.0)
        _on_test_loop(rt.debit_batcher.join_routing)
        shops.append(Shop(rt, testing.TestClient(create_app(runtime=rt)), stripe_stub))
    wait_until(lambda: all(len(s.runtime.debit_batcher.router._members) == 2 for s in shops), 10,
               what="the two processes seeing each other")
    yield shops
    for s in shops:
        s.runtime.close()


def test_a_purchase_is_recorded_by_its_channel_s_owner(routed) -> None:
    a, b = routed
    router_a, router_b = a.runtime.debit_batcher.router, b.runtime.debit_batcher.router
    seller = a.seller()
    listing_id = a.listing(seller, price_minor=500)
    buyer = a.buyer(5_000)
    for _ in range(40):  # each channel is B's with even odds
        if router_a.owner_of(buyer["channel_id"]) == router_b.me:
            break
        buyer = a.buyer(5_000)
    assert router_a.owner_of(buyer["channel_id"]) == router_b.me
    forwarded, served = router_a.forwarded, router_b.served
    r = a.buy(buyer, listing_id, key="k-routed")
    assert r.status_code == 201, r.json
    assert router_a.forwarded == forwarded + 1 and router_b.served == served + 1
    purchase_id = uuid.UUID(r.json["id"])
    assert purchase_id in b.market.purchases._recent and purchase_id not in a.market.purchases._recent
    # The owner's refusal comes back with its code; the owner's copy of the channel stays current.
    poor = a.listing(seller, price_minor=4_600)
    refused = a.buy(buyer, poor)
    assert (refused.status_code, refused.json["code"]) == (402, "channel_exhausted")
    assert a.runtime.debit_batcher.conflicts == b.runtime.debit_batcher.conflicts == 0
    assert a.channel(buyer)["spent_minor"] == 500
