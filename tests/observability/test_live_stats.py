"""``GET /v1/stats/live``: recent transactions as server-sent events (ids, kinds, amounts, never
a token), resumed with ``Last-Event-ID``, bounded in time, heartbeats when quiet; a JSON page
without ``Accept: text/event-stream``; each account its own transactions, auditors all."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import falcon.asgi
import pytest
from falcon import testing

from api.resources.stats import LiveStats
from domain.app.live_feed import LiveFeed
from domain.model.base import Meta
from domain.model.errors import LiveStreamsExhausted
from tests.helpers import auth, login, register

SSE = {"Accept": "text/event-stream"}


def parse_sse(text: str) -> tuple[list[dict], list[str]]:
    """The events (id, event, data) and the comments of a text/event-stream body."""
    found, comments = [], []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            if line.startswith(":"):
                comments.append(line[1:].strip())
            elif line:
                name, _, value = line.partition(":")
                fields[name] = value.lstrip(" ")
        if "data" in fields:
            found.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return found, comments


def stream(client, params: dict, headers: dict, read_s: float = 1.6) -> tuple[dict, str]:
    """Read a stream as a client does (``simulate_get`` would disconnect after the first event)."""
    async def run() -> tuple[dict, str]:
        async with testing.ASGIConductor(client.app) as conductor:
            async with conductor.simulate_get_stream("/v1/stats/live", params=params,
                                                     headers={**headers, **SSE}) as result:
                chunks, deadline = [], time.monotonic() + read_s
                while time.monotonic() < deadline:
                    chunks.append(await result.stream.read())
                    await asyncio.sleep(0.05)
                return dict(result.headers), b"".join(chunks).decode()

    return asyncio.run(run())


@pytest.fixture
def market_day(shop):
    seller = shop.seller()
    buyer = shop.buyer()
    bought = [shop.buy(buyer, shop.listing(seller)) for _ in range(2)]
    assert all(r.status_code == 201 for r in bought), [r.json for r in bought]
    return SimpleNamespace(seller=seller, buyer=buyer, purchases=[r.json for r in bought])


def test_a_stream_shows_the_callers_transactions_and_resumes(shop, market_day) -> None:
    headers, text = stream(shop.client, {"lifetime_s": "1"}, market_day.buyer["headers"])
    assert headers["content-type"].startswith("text/event-stream") and headers["cache-control"] == "no-store"
    events, comments = parse_sse(text)
    assert "retry: 1000" in text and any("ends in 1 s" in c for c in comments)
    purchases = [e for e in events if e["event"] == "purchase"]
    assert [e["data"]["purchase_id"] for e in purchases] == [p["id"] for p in market_day.purchases]
    debits = [e for e in events if e["event"] == "debit"]
    assert [(d["data"]["amount_minor"], d["data"]["currency"]) for d in debits] == [(1999, "USD")] * 2
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert all(e["data"]["id"] == e["id"] and e["data"]["at"] for e in events)
    for purchase in market_day.purchases:  # never a token
        assert purchase["delivery_token"] not in text
    assert "idempotency" not in text.lower() and "purpose" not in text
    # resume after the first event: the rest, and nothing before
    _, resumed = stream(shop.client, {"lifetime_s": "1"},
                        {**market_day.buyer["headers"], "Last-Event-ID": str(events[0]["id"])})
    assert parse_sse(resumed)[0] == events[1:]


def test_each_account_sees_its_own_and_auditors_everything(shop, market_day) -> None:
    def page(headers, **params):
        r = shop.client.simulate_get("/v1/stats/live", params=params, headers=headers)
        assert r.status_code == 200, r.json
        return r.json

    seller_view = page(market_day.seller["headers"])
    assert {i["kind"] for i in seller_view["items"]} == {"purchase", "debit"}  # it is paid by those debits
    assert [i["purchase_id"] for i in seller_view["items"] if i["kind"] == "purchase"] == [
        p["id"] for p in market_day.purchases]
    stranger = register(shop.client, roles=["buyer"])
    headers = auth(login(shop.client, stranger["email"]))
    assert page(headers)["items"] == []
    shop.market.identity.grant_role(Meta("test", "t").as_dict(), stranger["email"], "auditor")
    headers = auth(login(shop.client, stranger["email"]))
    everything = page(headers)
    assert everything["items"] == page(market_day.buyer["headers"])["items"]  # the only transactions so far
    last = everything["last_event_id"]
    assert page(headers, after=str(last))["items"] == []
    more = shop.buy(market_day.buyer, shop.listing(market_day.seller))
    newer = page(headers, after=str(last))["items"]
    assert [i["kind"] for i in newer] == ["debit", "purchase"] and newer[1]["purchase_id"] == more.json["id"]


def test_refusals(shop, market_day) -> None:
    headers = market_day.buyer["headers"]
    for params, extra, param in (({"after": "x"}, {}, "after"), ({}, {"Last-Event-ID": "-1"}, "Last-Event-ID"),
                                 ({"lifetime_s": "61"}, SSE, "lifetime_s"), ({"limit": "1"}, {}, "limit")):
        r = shop.client.simulate_get("/v1/stats/live", params=params, headers={**headers, **extra})
        assert (r.status_code, r.json["code"], r.json.get("param")) == (422, "invalid_input", param)
    assert shop.client.simulate_get("/v1/stats/live").status_code == 401


def _drain(stats: LiveStats, feed: LiveFeed, after: int | None, lifetime_s: int) -> list:
    async def run() -> list:
        req = SimpleNamespace(context=SimpleNamespace(pool=ThreadPoolExecutor(1)))
        return [event async for event in stats._stream(req, feed, after, lifetime_s)]

    return asyncio.run(run())


def test_a_quiet_stream_sends_heartbeats_ends_on_time_and_frees_its_slot(shop, market_day) -> None:
    stats = LiveStats(shop.market, poll_s=0.05, heartbeat_s=0.2, streams_max=1)
    feed = LiveFeed(shop.market, market_day.buyer["id"], ("buyer",))
    head = feed.head()
    sent = _drain(stats, feed, head, 1)
    comments = [e.comment for e in sent if e.comment]
    assert 3 <= comments.count("heartbeat") <= 6 and not [e for e in sent if e.event]
    assert stats.active == 0
    # the slot: a worker serves at most streams_max streams; the next is refused before it starts
    stats.active = 1
    req = testing.create_asgi_req(path="/v1/stats/live", headers={**market_day.buyer["headers"], **SSE})
    req.context.principal = SimpleNamespace(account_id=market_day.buyer["id"], roles=("buyer",))
    with pytest.raises(LiveStreamsExhausted):
        asyncio.run(stats.on_get(req, falcon.asgi.Response()))


def test_a_store_failure_ends_the_stream_with_a_comment(shop, market_day) -> None:
    stats = LiveStats(shop.market, poll_s=0.05)
    feed = LiveFeed(shop.market, market_day.buyer["id"], ("buyer",))

    def broken(after: int):
        raise RuntimeError("store away " + uuid.uuid4().hex)

    feed.poll = broken  # type: ignore[method-assign]
    sent = _drain(stats, feed, 0, 1)
    assert sent[-1].comment == "the stream ended on an error; reconnect" and stats.active == 0
