"""The trust projection and its route, on SQLite and PostgreSQL, with time under freezegun:
event timestamps are the only clock, a rebuild gives identical rows, search follows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from falcon import testing
from freezegun import freeze_time

from api.app import create_app
from domain.model.channel import Channel
from domain.model.device import Device
from domain.model.listing import Listing
from domain.model.purchase import Purchase
from domain.model.traces import Trace
from ops.bootstrap import make_runner
from projections.search.projection import SearchProjection
from projections.search.query import search
from projections.trust import TrustProjection, trust_of

META = {"actor": "test", "correlation_id": "c", "causation_id": ""}
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def enroll(runtime, account_id: str) -> str:
    device = Device(id=uuid.uuid4(), meta=META, account_id=account_id, name="n", public_key="pk", kid="k1",
                    kx_public_key="kx", endpoint="https://node.example")
    runtime.market.save(device)
    return str(device.id)


def sale(runtime, device_id: str, seller: str, buyer: str, *, price_minor: int = 1999) -> Purchase:
    now_s = int(datetime.now(UTC).timestamp())
    purchase = Purchase(id=uuid.uuid4(), meta=META, buyer_account_id=buyer, seller_account_id=seller,
                        seller_device_id=device_id, listing_id=str(uuid.uuid4()), listing_version=1,
                        channel_id=str(uuid.uuid4()), price_minor=price_minor, fee_minor=0, currency="USD",
                        idempotency_key="k", request_hash="h", token="t", kid="k", jti=str(uuid.uuid4()),
                        cnf_jkt="j", issued_at_s=now_s, start_by_s=now_s + 60, expires_at_s=now_s + 600)
    runtime.market.save(purchase)
    return purchase


def deliver(runtime, purchase: Purchase) -> None:
    purchase._delivered(meta=META, receipt="r", confirmation="c", delivered_at_ms=purchase.issued_at_s * 1000 + 5000)
    runtime.market.save(purchase)


def heartbeat(runtime, device_id: str, seq: int) -> None:
    trace = Trace(id=uuid.uuid4(), meta=META, device_id=device_id, seq=seq, kind="heartbeat", entry_hash=f"h{seq}",
                  prev_hash="p", created_ms=0, body_digest="d", sent_ms=0, nonce=str(seq), kid="k1", envelope={},
                  effect="none", effect_code=None)
    runtime.market.save(trace)


def publish(runtime, account_id: str, device_id: str, title: str) -> str:
    listing = Listing(id=uuid.uuid4(), meta=META, account_id=account_id, device_id=device_id, listing_key=title,
                      metadata={"title": title, "kind": "dataset", "category": "health", "licence": "CC-BY-4.0",
                                "tags": ["hospital"], "description": "hospital admissions by ward"},
                      price_minor=1000, currency="USD", proof={})
    runtime.market.save(listing)
    return str(listing.id)


def tick(runtime) -> None:
    """An event in the next minute of the projection's clock (a card channel: no fact, no
    subject), so the subjects changed so far are scored."""
    row = runtime.views.fetchone("SELECT now_ms FROM trust_clock WHERE id = 1")
    at = datetime.fromtimestamp(((row["now_ms"] if row else 0) // 60_000 + 1) * 60, UTC)
    with freeze_time(max(at, datetime.now(UTC))):
        runtime.market.save(Channel(id=uuid.uuid4(), meta=META, buyer_account_id="tick", currency="USD", rail="card",
                                    deposit_minor=0, funding_ref="", expiry_s=0, fee_bps=0,
                                    unsigned_allowance_minor=0, buyer_wallet="", chain_channel_id="",
                                    opened_at_s=0))


def device_trust(runtime, device_id: str, *, scored: bool = True) -> dict:
    """The device's stored score once the projection caught up (after a tick when ``scored``)."""
    runner = make_runner(runtime, TrustProjection())
    runner.catch_up()
    if scored:
        tick(runtime)
        runner.catch_up()
    return trust_of(runtime.views, "device", device_id)


def test_window_newcomer_and_self_dealing(runtime) -> None:
    with freeze_time(T0) as clock:
        seller = enroll(runtime, "seller")
        assert device_trust(runtime, seller)["score"] == 0.5  # a newcomer gets the prior
        # The seller buying from itself, many times: nothing gained.
        for _ in range(5):
            deliver(runtime, sale(runtime, seller, "seller", "seller"))
        self_dealt = device_trust(runtime, seller)
        assert self_dealt["components"]["delivery"]["score"] == 0.5
        assert {p["reason"] for p in self_dealt["components"]["delivery"]["purchases"]} == {"same_account"}
        deliver(runtime, sale(runtime, seller, "seller", "buyer-a"))
        counted = device_trust(runtime, seller)["components"]["delivery"]
        assert counted["score"] > 0.5
        # 29 days on the delivery still counts; 30 days and 1 second on it does not.
        clock.move_to(T0 + timedelta(days=29))
        heartbeat(runtime, enroll(runtime, "other"), 1)  # any event moves the projection's clock
        at_29_days = device_trust(runtime, seller, scored=False)  # the hourly sweep scored it at that event
        assert at_29_days["as_of_ms"] == int((T0 + timedelta(days=29)).timestamp() * 1000)
        assert at_29_days["components"]["delivery"]["positive"] == counted["positive"]
        clock.move_to(T0 + timedelta(days=30, seconds=1))
        heartbeat(runtime, enroll(runtime, "third"), 1)
        later = device_trust(runtime, seller, scored=False)
        assert later["as_of_ms"] == int((T0 + timedelta(days=30, seconds=1)).timestamp() * 1000)
        assert later["components"]["delivery"]["score"] == 0.5 and later["components"]["delivery"]["purchases"] == []


def test_one_buyer_counts_once_per_7_days_and_replay_is_identical(runtime) -> None:
    with freeze_time(T0) as clock:
        seller = enroll(runtime, "seller")
        for _ in range(6):
            deliver(runtime, sale(runtime, seller, "seller", "buyer-a"))
        one_buyer = device_trust(runtime, seller)["components"]["delivery"]["positive"]
        assert one_buyer == 1.0  # six purchases, one buyer, one week: one purchase's worth
        for hour in range(1, 5):
            clock.move_to(T0 + timedelta(hours=hour))
            heartbeat(runtime, seller, hour)
            deliver(runtime, sale(runtime, seller, "seller", f"buyer-{hour}"))
    runner = make_runner(runtime, TrustProjection())
    runner.catch_up()
    before = runtime.views.fetchall("SELECT * FROM trust_scores ORDER BY subject")
    runner.rebuild()
    assert runtime.views.fetchall("SELECT * FROM trust_scores ORDER BY subject") == before
    device = trust_of(runtime.views, "device", seller)
    assert trust_of(runtime.views, "account", "seller")["score"] == device["score"]
    # Hours 0..3 are judged (hour 4 is under way); heartbeats came in hours 1, 2 and 3.
    assert (device["components"]["uptime"]["hours_observed"], device["components"]["uptime"]["hours_up"]) == (4, 3)


def test_listings_show_the_score_and_ranking_follows_it(runtime) -> None:
    with freeze_time(T0):
        good, plain = enroll(runtime, "good"), enroll(runtime, "plain")
        good_listing = publish(runtime, "good", good, "hospital admissions A")
        plain_listing = publish(runtime, "plain", plain, "hospital admissions B")
        make_runner(runtime, SearchProjection()).catch_up()
        make_runner(runtime, TrustProjection()).catch_up()
        first = {r["id"]: r for r in search(runtime.views, {})["items"]}
        assert first[good_listing]["trust_score"] == first[plain_listing]["trust_score"] == 0.5
        for i in range(8):
            deliver(runtime, sale(runtime, good, "good", f"buyer-{i}"))
        score = device_trust(runtime, good)["score"]
        assert score > 0.5
        items = search(runtime.views, {})["items"]
        assert items[0]["id"] == good_listing and items[0]["trust_score"] == score
        # A search projection rebuilt alone reads the current scores.
        make_runner(runtime, SearchProjection()).rebuild()
        assert {r["id"]: r["trust_score"] for r in search(runtime.views, {})["items"]}[good_listing] == score
        client = testing.TestClient(create_app(runtime=runtime))
        answer = client.simulate_get(f"/v1/trust/{good}")
        assert answer.status_code == 200, answer.text
        body = answer.json
        assert body["score"] == score and body["account_score"] == score
        assert {p["buyer_account_id"] for p in body["components"]["delivery"]["purchases"]} == {
            f"buyer-{i}" for i in range(1, 9)}
        assert any(":Purchase.Delivered:" in s for s in body["sources"])
        assert body["scored"] is True
        fresh = enroll(runtime, "fresh")
        assert device_trust(runtime, fresh, scored=False) is None  # not scored before the next minute
        newcomer = client.simulate_get(f"/v1/trust/{fresh}").json
        assert (newcomer["score"], newcomer["scored"], newcomer["sources"]) == (0.5, False, [])
        assert client.simulate_get(f"/v1/trust/{uuid.uuid4()}").status_code == 404
        assert client.simulate_get("/v1/trust/not-a-uuid").status_code in (404, 422)
