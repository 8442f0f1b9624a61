"""The one place where errors become HTTP: ``application/problem+json`` with a stable code.

Resources raise ``domain.model.errors.MarketError`` subclasses and never build error responses;
Falcon's own errors (unknown route, wrong method, bad media) get codes here too, and any
unexpected exception becomes a logged 500 ``internal_error`` without leaking internals.
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi
import structlog

from api.jsonbytes import json_bytes
from domain.model.errors import MarketError

PROBLEM = "application/problem+json"
log = structlog.get_logger("api")

_FALCON_CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "route_not_found",
    405: "method_not_allowed", 406: "not_acceptable", 411: "length_required", 413: "payload_too_large",
    415: "unsupported_media_type", 429: "rate_limited", 503: "unavailable",
}


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    body = {"type": f"https://aimarket.dev/problems/{code}", "title": title, "status": status,
            "code": code, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def _send(req: falcon.Request, resp: falcon.Response, status: int, body: dict[str, Any]) -> None:
    body["request_id"] = getattr(req.context, "request_id", None)
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = PROBLEM
    resp.media = body


async def handle_market_error(req: falcon.Request, resp: falcon.Response, ex: MarketError, params: dict) -> None:
    _send(req, resp, ex.status, problem(ex.status, ex.code, ex.title, ex.detail, param=ex.param, **ex.extra))
    if ex.status == 401:
        resp.set_header("WWW-Authenticate", 'Bearer realm="aimarket"')


async def handle_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: dict) -> None:
    status = int(ex.status_code)
    code = _FALCON_CODES.get(status, "http_error")
    _send(req, resp, status, problem(status, code, ex.title or "Error", ex.description or ex.title or ""))
    for name, value in (ex.headers or {}).items():
        resp.set_header(name, value)


async def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
    if isinstance(ex, falcon.HTTPError):  # falcon routes its own errors here too when Exception is handled
        await handle_http_error(req, resp, ex, params)
        return
    log.exception("request.unhandled", error=repr(ex))
    _send(req, resp, 500, problem(500, "internal_error", "Internal error",
                                  "an unexpected error occurred; quote the request id when reporting it"))


def install(app: falcon.asgi.App) -> None:
    app.resp_options.media_handlers[PROBLEM] = falcon.media.JSONHandler(dumps=json_bytes)
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(MarketError, handle_market_error)
