"""``GET /v1/stats/live``: recent transactions as they are recorded (server-sent events).

Purchases, deliveries, debits, settlements, payouts and captured compute invocations: ids, kind, amounts, currencies and
times, never a payload, token, signature or free text (``domain.app.live_feed``). An account
sees the transactions it is a party to; auditors and admins see every one.

* ``Accept: text/event-stream`` (what ``EventSource`` sends): a stream. Each event's ``id`` is
  its log position, its ``event`` the kind, its ``data`` the JSON fields. The connection is
  stateless: it polls the log from a position every ``POLL_S`` (on the thread pool, a few
  milliseconds), sends a ``: heartbeat`` comment after ``HEARTBEAT_S`` of silence, and ends
  after ``lifetime_s`` (at most 60 s); the client reconnects with ``Last-Event-ID`` (the
  browser does so by itself after the ``retry`` the stream announces) and resumes after it.
  Without a position it starts ``RECENT_POSITIONS`` back from the head.
* Anything else: one JSON page of the same items after ``Last-Event-ID`` or ``after`` (or the
  recent window) and ``last_event_id``, the position to resume from.

Workers: a stream is a coroutine on the Uvicorn worker's event loop, not a thread, so it does
not hold one of the ``web_threads``; each web worker serves at most ``STREAMS_MAX`` streams at
once (more: 503 ``live_streams_exhausted``), so streams cannot take all of a worker's sockets.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import falcon
import structlog
from falcon.asgi import SSEvent

from api.http import principal_async, query_int, run_sync
from api.openapi import op, open_obj, query_param
from api.resources.purchases import _only_params
from domain.app.live_feed import LiveFeed
from domain.model.errors import InvalidInput, LiveStreamsExhausted

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace

log = structlog.get_logger("api")

EVENT_STREAM = "text/event-stream"
LIFETIME_S_MAX = 60
POLL_S = 1.0
HEARTBEAT_S = 15.0
RETRY_MS = 1000
RECENT_POSITIONS = 1000
STREAMS_MAX = 64
_POSITION = re.compile(r"^[0-9]{1,18}$")
PARAMS = [
    query_param("after", {"type": "string", "pattern": "^[0-9]{1,18}$"},
                "a log position: the items recorded after it (Last-Event-ID wins when both are sent)"),
    query_param("lifetime_s", {"type": "integer", "minimum": 1, "maximum": LIFETIME_S_MAX},
                f"the stream ends after this many seconds (default {LIFETIME_S_MAX}); then reconnect"),
    {"name": "Last-Event-ID", "in": "header", "required": False,
     "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
     "description": "the id (log position) of the last event received: resume after it"},
]
NAMES = frozenset({"after", "lifetime_s"})
ITEM = open_obj(id={"type": "integer", "description": "log position"},
                kind={"type": "string", "enum": ["purchase", "delivery", "debit", "settlement", "payout",
                                                 "invocation"]},
                at={"type": "string"})
PAGE = open_obj(items={"type": "array", "items": ITEM}, last_event_id={"type": "integer"})


def _position(req: falcon.Request) -> int | None:
    """``Last-Event-ID``, else ``after``; both are checked when both are sent."""
    after = [v for k, v in parse_qsl(req.query_string, keep_blank_values=True) if k == "after"]
    found = None
    for name, value in (("after", after[-1] if after else None), ("Last-Event-ID", req.get_header("Last-Event-ID"))):
        if value is not None:
            if not _POSITION.fullmatch(value):
                raise InvalidInput(f"{name} must be a log position (digits)", param=name)
            found = int(value)
    return found


class LiveStats:
    openapi = {"get": op(
        "Recent transactions (purchases, deliveries, debits, settlements, payouts, invocations) as server-sent events with "
        "Accept: text/event-stream, else one JSON page; yours, or everyone's for auditors", "observability",
        auth="account", params=PARAMS, responses={"200": PAGE},
        description="With Accept: text/event-stream the answer is a text/event-stream: id = log position, "
                    "event = kind, data = the item's JSON; heartbeat comments; it ends after lifetime_s (<= 60); "
                    "reconnect with Last-Event-ID. Never payloads, tokens or signatures.")}

    def __init__(self, market: Marketplace, *, poll_s: float = POLL_S, heartbeat_s: float = HEARTBEAT_S,
                 streams_max: int = STREAMS_MAX) -> None:
        self.market = market
        self.poll_s, self.heartbeat_s, self.streams_max = poll_s, heartbeat_s, streams_max
        self.active = 0  # streams open on this worker (one event loop: no lock needed)

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = await principal_async(req)
        _only_params(req, NAMES)
        after = _position(req)
        lifetime_s = query_int(req, "lifetime_s", LIFETIME_S_MAX, 1, LIFETIME_S_MAX)
        feed = LiveFeed(self.market, who.account_id, who.roles)
        resp.set_header("Cache-Control", "no-store")
        if EVENT_STREAM not in (req.get_header("Accept") or ""):
            start = after if after is not None else await run_sync(req, _recent_start, feed)
            items, reached = await run_sync(req, feed.poll, start)
            resp.media = {"items": [{"id": pos, "kind": kind, **item} for pos, kind, item in items],
                          "last_event_id": reached}
            return
        if self.active >= self.streams_max:
            raise LiveStreamsExhausted(f"this worker serves {self.streams_max} live streams already; retry later")
        resp.sse = self._stream(req, feed, after, lifetime_s)

    async def _stream(self, req: falcon.Request, feed: LiveFeed, after: int | None,
                      lifetime_s: int) -> AsyncIterator[SSEvent]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lifetime_s
        self.active += 1  # released when the stream ends (or, after a disconnect, when it is closed)
        try:
            position = after if after is not None else await run_sync(req, _recent_start, feed)
            yield SSEvent(comment=f"recent transactions; this stream ends in {lifetime_s} s", retry=RETRY_MS)
            quiet_since = loop.time()
            while loop.time() < deadline:
                items, position = await run_sync(req, feed.poll, position)
                for pos, kind, item in items:
                    yield SSEvent(json={"id": pos, "kind": kind, **item}, event=kind, event_id=str(pos))
                now = loop.time()
                if items:
                    quiet_since = now
                elif now - quiet_since >= self.heartbeat_s:
                    yield SSEvent(comment="heartbeat")
                    quiet_since = now
                await asyncio.sleep(max(0.0, min(self.poll_s, deadline - now)))
        except Exception as exc:  # noqa: BLE001 - the answer has started: end the stream, say why in the log
            log.warning("live_stream.ended", error=repr(exc))
            yield SSEvent(comment="the stream ended on an error; reconnect")
        finally:
            self.active -= 1


def _recent_start(feed: LiveFeed) -> int:
    return max(0, feed.head() - RECENT_POSITIONS)


def routes(market: Marketplace) -> list[tuple[str, Any]]:
    """The observability routes (``api.app.route_table``)."""
    from api.resources.transactions import TransactionTrace

    return [("/v1/transactions/{transaction_id}/trace", TransactionTrace(market)),
            ("/v1/stats/live", LiveStats(market))]
