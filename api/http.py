"""Request helpers shared by resources: JSON bodies checked against the OpenAPI schema,
authentication, and the ``Meta`` (who/why) every command receives.

The app is ASGI (``api.app``): the body is read once, asynchronously, into
``req.context.body`` before a responder runs, so the sync helpers here never block on the
network. ``run_sync`` moves blocking work (store reads, bcrypt) off the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import falcon
import fastjsonschema
import jsonschema

from domain.model.base import Meta
from domain.model.errors import InvalidInput, MalformedBody, PayloadTooLarge, Unauthenticated
from domain.model.principal import Principal

BODY_BYTES_MAX = 1_048_576


_UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_VALIDATORS: dict[int, tuple[dict[str, Any], jsonschema.protocols.Validator, Callable[[Any], Any] | None]] = {}


def _validators(schema: dict[str, Any]) -> tuple[jsonschema.protocols.Validator, Callable[[Any], Any] | None]:
    """Per schema object (schemas are module constants): the jsonschema validator, which
    explains errors, and a compiled one (fastjsonschema, ~10x faster) that decides the
    common case of a valid body. Compiled lazily, once."""
    entry = _VALIDATORS.get(id(schema))
    if entry is None or entry[0] is not schema:
        full = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
        try:
            fast: Callable[[Any], Any] | None = fastjsonschema.compile(schema, formats={"uuid": _UUID_RE})
        except fastjsonschema.JsonSchemaDefinitionException:
            fast = None
        entry = (schema, full, fast)
        _VALIDATORS[id(schema)] = entry
    return entry[1], entry[2]


T = TypeVar("T")


async def read_body(req: falcon.Request) -> bytes:
    """Read the whole body (at most ``BODY_BYTES_MAX``) into ``req.context.body``."""
    length = req.content_length
    if length is not None and length > BODY_BYTES_MAX:
        raise PayloadTooLarge(f"body above {BODY_BYTES_MAX} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in req.stream:
        size += len(chunk)
        if size > BODY_BYTES_MAX:
            raise PayloadTooLarge(f"body above {BODY_BYTES_MAX} bytes")
        chunks.append(chunk)
    body = req.context.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return body


def raw_body(req: falcon.Request, limit: int = BODY_BYTES_MAX) -> bytes:
    """The body read by ``read_body``, refused above ``limit`` bytes."""
    raw: bytes = req.context.body
    if len(raw) > limit:
        raise PayloadTooLarge(f"body above {limit} bytes")
    return raw


async def run_sync(req: falcon.Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking ``fn`` on the app's thread pool, with this request's context variables
    (request id for the logs)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(req.context.pool, call)


def read_json(req: falcon.Request, schema: dict[str, Any]) -> dict[str, Any]:
    """Parse the body and check it against the same schema the OpenAPI document publishes."""
    raw = raw_body(req)
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise MalformedBody("body must be JSON (Content-Type: application/json)") from None
    check(body, schema)
    return body


def check(value: Any, schema: dict[str, Any]) -> None:
    full, fast = _validators(schema)
    if fast is not None:
        try:
            fast(value)
            return
        except fastjsonschema.JsonSchemaValueException:
            pass  # the full validator decides and explains
    error = jsonschema.exceptions.best_match(full.iter_errors(value))
    if error is not None:
        param = ".".join(str(p) for p in error.absolute_path) or None
        raise InvalidInput(_describe(error, param), param=param)


def _describe(error: jsonschema.ValidationError, param: str | None) -> str:
    """Say what is wrong without echoing the value (it may be a password or a key)."""
    where = param or "body"
    rule, limit = error.validator, error.validator_value
    phrases = {
        "minLength": f"must be at least {limit} characters", "maxLength": f"must be at most {limit} characters",
        "pattern": "has the wrong format", "type": f"must be of type {limit}", "enum": f"must be one of {limit}",
        "minimum": f"must be >= {limit}", "maximum": f"must be <= {limit}", "minItems": f"needs {limit}+ items",
        "maxItems": f"allows at most {limit} items", "format": f"must be a valid {limit}",
    }
    if rule in phrases:
        return f"{where} {phrases[rule]}"
    if rule in ("required", "additionalProperties"):
        return error.message[:300]  # names the property, never a value
    return f"{where} is invalid ({rule})"


def request_id(req: falcon.Request) -> str:
    return str(req.context.request_id)


def principal(req: falcon.Request, *kinds: str) -> Principal:
    """Authenticate the bearer credential (API key, session/access JWT or device JWT)."""
    cached = getattr(req.context, "principal", None)
    if cached is None:
        cached = req.context.authenticator.authenticate(req.get_header("Authorization"))
        req.context.principal = cached
    if kinds:
        cached.require_kind(*kinds)
    return cached


async def principal_async(req: falcon.Request, *kinds: str) -> Principal:
    """``principal`` without blocking the loop: a session token verified before needs no I/O
    and is checked here; anything else (API keys and OAuth access tokens are checked against
    the store for revocation) runs on the thread pool. The authorization middleware has
    usually authenticated the request already: its principal is reused."""
    who = getattr(req.context, "principal", None)
    if who is not None:
        if kinds:
            who.require_kind(*kinds)
        return who
    header = req.get_header("Authorization") or ""
    if header[:7].lower() == "bearer ":
        who = req.context.authenticator.cached_session(header[7:].strip())
    if who is None:
        return await run_sync(req, principal, req, *kinds)
    req.context.principal = who
    if kinds:
        who.require_kind(*kinds)
    return who


class Authenticator:
    """Turns a bearer credential into a principal (API key, session/access JWT, device JWT)."""

    def __init__(self, market: Any) -> None:
        self.identity = market.identity
        self.devices = market.devices

    def cached_session(self, token: str) -> Principal | None:
        return self.identity.cached_session_principal(token)

    def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise Unauthenticated("send Authorization: Bearer <token or API key>")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("use the Bearer scheme")
        if token.startswith("aim_"):
            return self.identity.authenticate_api_key(token)
        from domain.model.tokens import peek_header

        if peek_header(token).alg == "EdDSA":
            return self.devices.authenticate_device(token)
        return self.identity.authenticate_platform_token(token)


def meta(req: falcon.Request, who: Principal | None = None) -> dict[str, str]:
    """Who acts (the principal, or anonymous) and why (this request)."""
    actor = who.actor if who is not None else "anonymous"
    rid = request_id(req)
    return Meta(actor=actor, correlation_id=rid, causation_id=rid).as_dict()


def query_int(req: falcon.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = req.get_param(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer", param=name) from None
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be within {lo}..{hi}", param=name)
    return value
