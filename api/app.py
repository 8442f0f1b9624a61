"""``create_app(settings)``: the Falcon ASGI app. Called after fork (gunicorn), never at import.

Responders written as plain functions (most of them: they call the store, bcrypt, the
chain) run on the app's thread pool after the body has been read on the loop; a responder
written ``async`` (the debit route) runs on the loop itself, without a thread hand-off.
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
from typing import Any

import falcon
import falcon.asgi
import structlog

from api import errors
from api.http import read_body, run_sync
from api.jsonbytes import json_bytes
from api.logging import configure, request_line
from api.openapi import build_spec
from api.resources import audit, catalogue, devices, identity, money, system
from ops.bootstrap import Runtime, build_runtime
from ops.settings import Settings, load_settings

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestContext:
    """Binds the runtime, the thread pool and a request id; writes one canonical log line
    per request."""

    def __init__(self, runtime: Runtime, pool: ThreadPoolExecutor) -> None:
        self.runtime = runtime
        self.pool = pool
        # Request ids: a random per-process prefix and a counter, unique across processes
        # and hosts, and cheaper than a uuid4 (a getrandom call) on every request.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        incoming = req.get_header("X-Request-Id") or ""
        req.context.request_id = (incoming if REQUEST_ID_RE.match(incoming)
                                  else f"{self._id_prefix}-{next(self._ids):x}")
        req.context.runtime = self.runtime
        req.context.pool = self.pool
        req.context.started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=req.context.request_id)

    async def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                               ok: bool) -> None:
        resp.set_header("X-Request-Id", req.context.request_id)
        who = getattr(req.context, "principal", None)
        request_line({"method": req.method, "path": req.path, "status": int(resp.status_code),
                      "duration_ms": round((time.perf_counter() - req.context.started) * 1000, 2),
                      "actor": who.actor if who else None, "request_id": req.context.request_id})


class HubApp(falcon.asgi.App):
    """The Falcon app, holding the runtime it serves so its owner can close it."""

    runtime: Runtime


class Threaded:
    """A resource whose plain responders run on the thread pool, the body read first."""

    def __init__(self, resource: object) -> None:
        self.resource = resource
        for method in falcon.constants.COMBINED_METHODS:
            name = f"on_{method.lower()}"
            responder = getattr(resource, name, None)
            if responder is not None:
                setattr(self, name, responder if inspect.iscoroutinefunction(responder) else _threaded(responder))


def _threaded(responder: Callable[..., None]) -> Callable[..., Any]:
    async def run(req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        await read_body(req)
        await run_sync(req, responder, req, resp, **params)

    return run


def route_table() -> list[tuple[str, object]]:
    return [
        ("/healthz", system.Health()),
        ("/readyz", system.Ready()),
        ("/.well-known/ai-market.json", system.Discovery()),
        ("/v1/accounts", identity.Accounts()),
        ("/v1/sessions", identity.Sessions()),
        ("/v1/me", identity.Me()),
        ("/v1/me/totp", identity.Totp()),
        ("/v1/me/totp/confirm", identity.TotpConfirm()),
        ("/v1/api-keys", identity.Credentials("api_key")),
        ("/v1/api-keys/{credential_id}", identity.Credential("api_key")),
        ("/v1/oauth/clients", identity.Credentials("oauth_client")),
        ("/v1/oauth/clients/{credential_id}", identity.Credential("oauth_client")),
        ("/v1/oauth/token", identity.OAuthToken()),
        ("/v1/devices/challenges", devices.Challenges()),
        ("/v1/devices", devices.Devices()),
        ("/v1/devices/me", devices.DeviceSelf()),
        ("/v1/devices/{device_id}", devices.Device()),
        ("/v1/devices/{device_id}/keys", devices.DeviceKeys()),
        ("/v1/audit/events", audit.AuditEvents()),
        ("/v1/listings", catalogue.Listings()),
        ("/v1/listings/{listing_id}", catalogue.Listing()),
        ("/v1/search", catalogue.Search()),
        ("/v1/categories", catalogue.Categories()),
        *money_routes(),
    ]


def money_routes() -> list[tuple[str, object]]:
    return [
        ("/v1/me/wallet", money.Wallet()),
        ("/v1/channels", money.Channels()),
        ("/v1/channels/{channel_id}", money.Channel()),
        ("/v1/channels/{channel_id}/top-ups", money.TopUps()),
        ("/v1/channels/{channel_id}/debits", money.Debits()),
        ("/v1/channels/{channel_id}/close", money.Close()),
        ("/v1/webhooks/stripe", money.StripeWebhook()),
        ("/v1/balances", money.Balances()),
        ("/v1/statements", money.Statements()),
        ("/v1/me/payout-destination", money.PayoutDestination()),
    ]


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> HubApp:
    """Build the ASGI app; with no runtime given, build one from settings (env by default)."""
    settings = settings or (runtime.settings if runtime else load_settings())
    configure(settings.log_format)
    runtime = runtime or build_runtime(settings)
    pool = ThreadPoolExecutor(max_workers=settings.web_threads, thread_name_prefix="api")
    app = HubApp(middleware=[RequestContext(runtime, pool)])
    weakref.finalize(app, pool.shutdown, wait=False)
    app.req_options.strip_url_path_trailing_slash = True
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(dumps=json_bytes)
    errors.install(app)
    table = route_table()
    spec = build_spec(table, title="aimarket hub", version=system.API_VERSION, server_url=settings.hub_url)
    table.append(("/openapi.json", system.OpenApiDoc(spec)))
    spec["paths"]["/openapi.json"] = build_spec([table[-1]], title="", version="", server_url="")["paths"][
        "/openapi.json"]
    for path, resource in table:
        app.add_route(path, Threaded(resource))
    app.runtime = runtime
    return app
