"""``create_app(runtime)``: the Falcon ASGI app. Called after fork (gunicorn), never at import.

The runtime (built by the composition root, ``ops/bootstrap.py``) carries the composed
application and the read-model database; each resource receives what it uses when it is
built (Falcon's app-factory style), and nothing is looked up per request.

Responders written as plain functions (most of them: they call the store, bcrypt, the
chain) run on the app's thread pool after the body has been read on the loop; a responder
written ``async`` (the debit and purchase routes) runs on the loop itself, without a thread hand-off.
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import falcon
import falcon.asgi
import structlog

from api import errors
from api.authz import Authorize, annotate_spec
from api.http import (
    JSON_MEDIA,
    Authenticator,
    check_form,
    check_limits,
    check_request,
    parse_json,
    read_body,
    run_sync,
)
from api.jsonbytes import json_bytes
from api.logging import request_line
from api.openapi import body_rule, build_spec
from api.resources import audit, catalogue, devices, identity, invocations, metrics, money, purchases, system
from api.resources.audit_trail import routes as audit_trail_routes
from api.resources.stats import routes as observability_routes
from api.resources.traces import Traces
from api.resources.trust import Trust
from api.tracing import HEADER as TRACEPARENT
from api.tracing import SpanIds, rerooted, transaction_of
from domain.model.errors import InvalidInput
from domain.model.json_input import check_depth

if TYPE_CHECKING:
    from domain.app.debit_batcher import DebitBatcher
    from domain.app.marketplace import Marketplace
    from domain.model.ports import SettlementQueue, ViewDB

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class ApiSettings(Protocol):
    """The settings the API reads (``ops.settings.Settings`` satisfies it)."""

    hub_name: str
    hub_url: str
    store: str
    web_threads: int


class HubRuntime(Protocol):
    """What the API is built from (``ops.bootstrap.Runtime`` satisfies it)."""

    settings: ApiSettings
    market: Marketplace
    views: ViewDB
    debit_batcher: DebitBatcher
    enqueue_settlement: SettlementQueue | None

    def close(self) -> None: ...


class RequestContext:
    """Binds the authenticator, the thread pool, a request id and the request's trace
    (``traceparent``, ``api.tracing``); answers the trace; observes the request's latency
    (``api.resources.metrics``); writes one canonical log line per request."""

    def __init__(self, market: Marketplace, pool: ThreadPoolExecutor) -> None:
        self.authenticator = Authenticator(market)
        self.pool = pool
        # Request ids: a random per-process prefix and a counter, unique across processes
        # and hosts, and cheaper than a uuid4 (a getrandom call) on every request.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()
        self.spans = SpanIds()
        self.latency = metrics.request_latency()

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        incoming = req.get_header("X-Request-Id") or ""
        req.context.request_id = (incoming if REQUEST_ID_RE.match(incoming)
                                  else f"{self._id_prefix}-{next(self._ids):x}")
        req.context.authenticator = self.authenticator
        req.context.pool = self.pool
        req.context.started = time.perf_counter()
        trace = req.context.trace = self.spans.start(req.get_header(TRACEPARENT))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=req.context.request_id, trace_id=trace.trace_id,
                                               span_id=trace.span_id)

    async def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                               params: dict[str, Any]) -> None:
        # A route naming a purchase (or invocation) answers on its trace (api.tracing); POST
        # /v1/purchases and /v1/invocations are re-rooted when their meta is built (the
        # principal is known by then).
        req.context.params = params
        if "purchase_id" in params or "invocation_id" in params:
            transaction = transaction_of(req, None)
            if transaction is not None:
                trace = req.context.trace = rerooted(req.context.trace, transaction)
                structlog.contextvars.bind_contextvars(trace_id=trace.trace_id)

    async def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                               ok: bool) -> None:
        resp.set_header("X-Request-Id", req.context.request_id)
        trace = req.context.trace
        resp.set_header(TRACEPARENT, trace.traceparent)
        who = getattr(req.context, "principal", None)
        elapsed_s = time.perf_counter() - req.context.started
        status = int(resp.status_code)
        self.latency.observe(req.uri_template, req.method, status, elapsed_s)
        request_line({"method": req.method, "path": req.path, "status": status,
                      "duration_ms": round(elapsed_s * 1000, 2), "actor": who.actor if who else None,
                      "request_id": req.context.request_id, "trace_id": trace.trace_id, "span_id": trace.span_id})


class InputGuard:
    """The input rules (``api.http``) before anything else reads the request: sizes of the
    target and headers first, then path, query and data headers, the body's media type and
    presence against the operation, and the body's size and depth (or, for a form, its text).
    After authorization, the responder parses and schema-checks the JSON (``read_json``, or
    ``_threaded`` for an operation without fields) before any command runs."""

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        check_limits(req)

    async def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                               params: dict[str, Any]) -> None:
        bodies = getattr(resource, "bodies", None)
        if bodies is None or req.method not in bodies:
            return  # no route (Falcon answers 404) or a method it answers itself (405, OPTIONS)
        rule = bodies[req.method]
        if not check_request(req, params, rule) or rule is None:
            return
        raw = await read_body(req)
        if rule[0] == JSON_MEDIA:
            check_depth(raw)
        else:
            check_form(raw, "body")


class HubApp(falcon.asgi.App):
    """The Falcon app, holding the runtime it serves so its owner can close it."""

    runtime: HubRuntime


class Threaded:
    """A resource whose plain responders run on the thread pool, the body read first (and,
    for an operation without fields, refused unless empty or ``{}``)."""

    def __init__(self, resource: object) -> None:
        self.resource = resource
        operations = getattr(resource, "openapi", {})
        self.bodies: dict[str, tuple[str, bool] | None] = {}  # per method, for InputGuard
        for method in falcon.constants.COMBINED_METHODS:
            name = f"on_{method.lower()}"
            responder = getattr(resource, name, None)
            if responder is not None:
                self.bodies[method] = rule = body_rule(method, operations.get(method.lower()))
                fields = rule is not None and rule[1]
                setattr(self, name, responder if inspect.iscoroutinefunction(responder)
                        else _threaded(responder, empty=rule is not None and not fields))


def _threaded(responder: Callable[..., None], *, empty: bool) -> Callable[..., Any]:
    async def run(req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        raw = await read_body(req)
        if empty and raw and parse_json(raw) != {}:
            raise InvalidInput("this operation takes no fields: send no body or {}")
        await run_sync(req, responder, req, resp, **params)

    return run


def route_table(runtime: HubRuntime) -> list[tuple[str, object]]:
    market, views, settings = runtime.market, runtime.views, runtime.settings
    return [
        ("/healthz", system.Health()),
        ("/readyz", system.Ready(market, views, settings.store)),
        ("/metrics", metrics.Metrics(market, views)),
        ("/.well-known/ai-market.json", system.Discovery(market, settings.hub_name, settings.hub_url)),
        ("/v1/accounts", identity.Accounts(market)),
        ("/v1/sessions", identity.Sessions(market)),
        ("/v1/me", identity.Me(market)),
        ("/v1/me/totp", identity.Totp(market)),
        ("/v1/me/totp/confirm", identity.TotpConfirm(market)),
        ("/v1/api-keys", identity.Credentials(market, "api_key")),
        ("/v1/api-keys/{credential_id}", identity.Credential(market, "api_key")),
        ("/v1/oauth/clients", identity.Credentials(market, "oauth_client")),
        ("/v1/oauth/clients/{credential_id}", identity.Credential(market, "oauth_client")),
        ("/v1/oauth/token", identity.OAuthToken(market)),
        ("/v1/devices/challenges", devices.Challenges(market)),
        ("/v1/devices", devices.Devices(market, views)),
        ("/v1/devices/me", devices.DeviceSelf(market)),
        ("/v1/devices/{device_id}", devices.Device(market)),
        ("/v1/devices/{device_id}/keys", devices.DeviceKeys(market)),
        ("/v1/traces", Traces(market)),
        ("/v1/trust/{device_id}", Trust(market, views)),
        ("/v1/audit/events", audit.AuditEvents(views)),
        *audit_trail_routes(market, views),
        ("/v1/listings", catalogue.Listings(market)),
        ("/v1/listings/{listing_id}", catalogue.Listing(market, views)),
        ("/v1/search", catalogue.Search(views)),
        ("/v1/categories", catalogue.Categories(views)),
        *money_routes(runtime),
        *purchase_routes(runtime),
        *observability_routes(market),
    ]


def money_routes(runtime: HubRuntime) -> list[tuple[str, object]]:
    market, views = runtime.market, runtime.views
    return [
        ("/v1/me/wallet", money.Wallet(market)),
        ("/v1/channels", money.Channels(market, views)),
        ("/v1/channels/{channel_id}", money.Channel(market)),
        ("/v1/channels/{channel_id}/top-ups", money.TopUps(market)),
        ("/v1/channels/{channel_id}/debits", money.Debits(runtime.debit_batcher)),
        ("/v1/channels/{channel_id}/close", money.Close(market, runtime.enqueue_settlement)),
        ("/v1/webhooks/stripe", money.StripeWebhook(market)),
        ("/v1/balances", money.Balances(views)),
        ("/v1/statements", money.Statements(views)),
        ("/v1/me/payout-destination", money.PayoutDestination(market)),
    ]


def purchase_routes(runtime: HubRuntime) -> list[tuple[str, object]]:
    market = runtime.market
    return [
        ("/v1/purchases", purchases.Purchases(runtime.debit_batcher, runtime.views)),
        ("/v1/purchases/{purchase_id}", purchases.Purchase(market)),
        ("/v1/purchases/{purchase_id}/revoke", purchases.Revoke(market)),
        ("/v1/invocations", invocations.Invocations(market)),
        ("/v1/invocations/{invocation_id}", invocations.Invocation(market)),
    ]


def create_app(runtime: HubRuntime) -> HubApp:
    """Build the ASGI app over a wired runtime (the entry point reads settings and builds it)."""
    settings = runtime.settings
    pool = ThreadPoolExecutor(max_workers=settings.web_threads, thread_name_prefix="api")
    app = HubApp(middleware=[RequestContext(runtime.market, pool), InputGuard(), Authorize()])
    weakref.finalize(app, pool.shutdown, wait=False)
    app.req_options.strip_url_path_trailing_slash = True
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(dumps=json_bytes)
    errors.install(app)
    table = route_table(runtime)
    spec = build_spec(table, title="aimarket hub", version=system.API_VERSION, server_url=settings.hub_url)
    table.append(("/openapi.json", system.OpenApiDoc(spec)))
    spec["paths"]["/openapi.json"] = build_spec([table[-1]], title="", version="", server_url="")["paths"][
        "/openapi.json"]
    annotate_spec(spec)  # each operation's credentials and scopes, from the one table
    for path, resource in table:
        app.add_route(path, Threaded(resource))
    app.runtime = runtime
    return app
