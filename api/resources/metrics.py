"""``GET /metrics``: Prometheus text format, computed from the database at each scrape.

Every value comes from shared state (the log's head, ``projection_tracking``,
``projection_failures``, ``projection_runners``; ``projections.health``), read when the
scrape arrives, into a fresh ``CollectorRegistry`` holding one custom collector. Nothing is
kept in the process, so any gunicorn worker (or host) gives the same answer and
``prometheus_client``'s multiprocess mode is not needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import falcon
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from api.openapi import op
from projections.health import Health, read_health

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.ports import ViewDB

log = structlog.get_logger("api")


class ProjectionCollector:
    """Yields the projection metrics from one read of the database."""

    def __init__(self, market: Marketplace, views: ViewDB) -> None:
        self.market = market
        self.views = views

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
        yield GaugeMetricFamily("aimarket_event_log_head_position", "Position of the newest event in the log",
                                value=head)
        yield from projection_families(states)


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
    openapi = {"get": op("Prometheus metrics (text format): projection position, lag, stalled, failures", "system",
                         responses={"200": None})}

    def __init__(self, market: Marketplace, views: ViewDB) -> None:
        self.market = market
        self.views = views

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ProjectionCollector(self.market, self.views))
        resp.data = generate_latest(registry)
        resp.content_type = CONTENT_TYPE_LATEST
