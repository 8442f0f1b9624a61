"""``GET /metrics``: Prometheus text format (``prometheus_client``).

Two kinds of figures, so that any gunicorn worker (or host) answers the same:

* **From shared state, read at each scrape** (a fresh ``CollectorRegistry`` with one custom
  collector): the log's head; per projection its position, lag, failures and runner heartbeat
  (``projections.health``); counters of the business facts in the log (debits, purchases,
  deliveries, invocations, settlements, payouts, and every event type), counted from the
  ``audit_events`` read model (so they follow the ``audit_log`` projection: its lag is in the
  same answer); and the outbox depth the nodes report in their heartbeats (the latest
  heartbeat of each device within ``HEARTBEAT_FRESH_MS``: sum, maximum, how many devices).
  Counts and heartbeats are read incrementally: each process remembers the position it has
  counted to and reads only what is newer, so a scrape costs what arrived since the last one.
* **In the process**: the request latency histogram per route template, method and status
  class (``RequestContext`` observes it). Under gunicorn each worker has its own, so
  ``ops/serve.py`` runs prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``):
  a scrape then sums every worker's files (``MultiProcessCollector``), whichever worker takes
  it. Without it (the embedded default, tests) the process's own histogram is reported.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import falcon
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from api.openapi import op
from projections.health import Health, read_health

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.ports import ViewDB

log = structlog.get_logger("api")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The business facts: metric name -> (help, the event types that count, as audit_events names them).
FACTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "aimarket_debits": ("Channel debits recorded (Channel.Debited)", ("Channel.Debited",)),
    "aimarket_purchases": ("Purchases recorded (Purchase.Purchased)", ("Purchase.Purchased",)),
    "aimarket_deliveries": ("Purchases delivered (Purchase.Delivered)", ("Purchase.Delivered",)),
    "aimarket_invocations": ("Compute invocations captured (Invocation.Captured; none until the hub bills "
                             "compute)", ("Invocation.Captured",)),
    "aimarket_settlements": ("Channels settled (Channel.Settled)", ("Channel.Settled",)),
    "aimarket_payouts": ("Payouts sent to sellers (SellerPayouts.PayoutSent)", ("SellerPayouts.PayoutSent",)),
}
TRACE_TOPIC = "domain.model.traces:Trace.TraceRecorded"
HEARTBEAT_FRESH_MS = 15 * 60 * 1000  # three missed 5-minute heartbeats: the device is not reporting
SCAN_BATCH = 1000
FIRST_SCAN_POSITIONS_MAX = 500_000  # a new process reads heartbeats from at most this far back


class RequestLatency:
    """The request latency histogram (``aimarket_http_request_duration_seconds``), with the
    labelled children cached: ``labels()`` costs more than ``observe()`` on the debit path."""

    def __init__(self) -> None:
        self.histogram = Histogram("aimarket_http_request_duration_seconds",
                                   "Request latency by route template, method and status class",
                                   ["route", "method", "status_class"], buckets=LATENCY_BUCKETS_S, registry=None)
        self._children: dict[tuple[str, str, str], Any] = {}

    def observe(self, template: str | None, method: str, status: int, seconds: float) -> None:
        key = (template or "unmatched", method, f"{status // 100}xx")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.histogram.labels(*key)
        child.observe(seconds)


@functools.cache
def request_latency() -> RequestLatency:
    """The process's one histogram (built on first use, after fork: never at import)."""
    return RequestLatency()


class LogFacts:
    """Event counts per type and the nodes' latest heartbeats, read incrementally (module
    docstring). One per app; a lock keeps concurrent scrapes from counting twice."""

    def __init__(self, market: Marketplace, views: ViewDB) -> None:
        self.market, self.views = market, views
        self.counted_to = 0
        self.counts: dict[str, int] = {}
        self.scanned_to: int | None = None
        self.heartbeats: dict[str, tuple[int, int]] = {}  # device -> (sent_ms, outbox_pending)
        self.lock = threading.Lock()

    def refresh(self, head: int) -> None:
        with self.lock:
            rows = self.views.fetchall("SELECT event_type, COUNT(*) AS n, MAX(position) AS upto FROM audit_events"
                                       " WHERE position > ? GROUP BY event_type", (self.counted_to,))
            for row in rows:
                self.counts[row["event_type"]] = self.counts.get(row["event_type"], 0) + int(row["n"])
            self.counted_to = max([self.counted_to, *(int(r["upto"]) for r in rows)])
            self._scan_heartbeats(head)

    def _scan_heartbeats(self, head: int) -> None:
        start = self.scanned_to if self.scanned_to is not None else max(0, head - FIRST_SCAN_POSITIONS_MAX)
        recorder, mapper = self.market.recorder, self.market.mapper
        while start < head:
            batch = recorder.select_notifications(start=start + 1, limit=SCAN_BATCH, stop=head, topics=[TRACE_TOPIC])
            for notification in batch:
                trace = mapper.to_domain_event(notification)
                if trace.kind == "heartbeat":
                    body = trace.envelope["credentialSubject"]["entry"]["body"]
                    self.heartbeats[trace.device_id] = (trace.sent_ms, int(body.get("outbox_pending", 0)))
            if len(batch) < SCAN_BATCH:
                break
            start = batch[-1].id
        self.scanned_to = head

    def outbox(self, now_ms: int) -> tuple[int, int, int]:
        """(pending entries summed, the largest, devices reporting) over fresh heartbeats."""
        fresh = [pending for sent_ms, pending in self.heartbeats.values() if now_ms - sent_ms <= HEARTBEAT_FRESH_MS]
        return sum(fresh), max(fresh, default=0), len(fresh)


class StoreCollector:
    """Yields the figures read from the store and the read models at this scrape."""

    def __init__(self, market: Marketplace, views: ViewDB, facts: LogFacts) -> None:
        self.market, self.views, self.facts = market, views, facts

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("aimarket_store_up", "1 when the event store and the read models answered this scrape")
        try:
            head = self.market.recorder.max_notification_id() or 0
            states = read_health(self.views, head)
        except Exception as exc:  # noqa: BLE001 - a scrape reports the outage instead of failing
            log.warning("metrics.store_unreachable", error=repr(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        try:
            self.facts.refresh(head)
        except Exception as exc:  # noqa: BLE001 - e.g. no audit_events table before the projections' first run
            log.warning("metrics.facts_unavailable", error=repr(exc))  # the last counts read are reported
        yield GaugeMetricFamily("aimarket_event_log_head_position", "Position of the newest event in the log",
                                value=head)
        yield from projection_families(states)
        yield from fact_families(self.facts.counts)
        yield from outbox_families(*self.facts.outbox(int(self.market.clock().timestamp() * 1000)))


def fact_families(counts: dict[str, int]) -> Iterator[Any]:
    for name, (text, types) in FACTS.items():
        yield CounterMetricFamily(name, text, value=sum(counts.get(t, 0) for t in types))
    every = CounterMetricFamily("aimarket_events", "Events in the log by type (as counted by the audit_log "
                                "projection)", labels=["type"])
    for event_type in sorted(counts):
        every.add_metric([event_type], counts[event_type])
    yield every


def outbox_families(pending: int, largest: int, devices: int) -> Iterator[Any]:
    yield GaugeMetricFamily("aimarket_node_outbox_pending_entries",
                            "Outbox entries not yet delivered, summed over the devices' latest heartbeats "
                            "(last 15 minutes)", value=pending)
    yield GaugeMetricFamily("aimarket_node_outbox_pending_entries_max",
                            "The largest outbox backlog a device reported (last 15 minutes)", value=largest)
    yield GaugeMetricFamily("aimarket_nodes_reporting", "Devices whose heartbeat arrived in the last 15 minutes",
                            value=devices)


def projection_families(states: list[Health]) -> Iterator[Any]:
    labels = ["projection"]
    families = {
        "position": GaugeMetricFamily("aimarket_projection_position", "Log position the projection has reached",
                                      labels=labels),
        "lag": GaugeMetricFamily("aimarket_projection_lag_positions", "Log head minus the projection's position",
                                 labels=labels),
        "stalled": GaugeMetricFamily("aimarket_projection_stalled",
                                     "1 when the projection is failing, stuck or has no runner", labels=labels),
        "attempts": GaugeMetricFamily("aimarket_projection_failure_attempts",
                                      "Failed attempts on the current failure (0 when not failing)", labels=labels),
        "failures": CounterMetricFamily("aimarket_projection_failures",
                                        "Batches that failed, over the projection's life", labels=labels),
        "heartbeat": GaugeMetricFamily("aimarket_projection_heartbeat_age_seconds",
                                       "Seconds since the active runner's last heartbeat (NaN: none yet)",
                                       labels=labels),
    }
    for h in states:
        failure = h.failure
        families["position"].add_metric([h.name], h.position)
        families["lag"].add_metric([h.name], h.lag)
        families["stalled"].add_metric([h.name], 1 if h.stalled else 0)
        families["attempts"].add_metric([h.name], failure.attempts if failure else 0)
        families["failures"].add_metric([h.name], failure.failures_total if failure else 0)
        families["heartbeat"].add_metric([h.name], math.nan if h.heartbeat_age_s is None else h.heartbeat_age_s)
    yield from families.values()


class Metrics:
    openapi = {"get": op("Prometheus metrics (text format): request latency per route, debits, purchases, "
                         "deliveries, invocations, settlements, payouts, node outbox depth, projection lag",
                         "system", responses={"200": None})}

    def __init__(self, market: Marketplace, views: ViewDB) -> None:
        self.market = market
        self.views = views
        self.facts = LogFacts(market, views)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(self.market, self.views, self.facts))
        if os.environ.get(MULTIPROC_ENV):
            MultiProcessCollector(registry)  # every worker's histogram files, summed
        else:
            registry.register(request_latency().histogram)
        resp.data = generate_latest(registry)
        resp.content_type = CONTENT_TYPE_LATEST
