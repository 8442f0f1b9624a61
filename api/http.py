"""Request helpers shared by resources: the input rules every request passes, JSON bodies
checked against the OpenAPI schema, authentication, and the ``Meta`` (who/why) every
command receives.

The app is ASGI (``api.app``): the body is read once, asynchronously, into
``req.context.body`` before a responder runs, so the sync helpers here never block on the
network. ``run_sync`` moves blocking work (store reads, bcrypt) off the event loop.

Input rules, in one place (``docs/api.md``, "Input"): a body is at most 1 MiB, JSON at most
64 levels deep (checked on the raw bytes before any parser runs: ``domain.model.json_input``),
numbers where the schema says integer are JSON integers within 64 bits, and every string
that enters (body strings and member names, query and path values, the headers used as data)
is Unicode text: valid UTF-8, no lone surrogate, no C0 control character except tab, newline
and CR in free-text fields (``description``). ``check_text`` is that rule.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import falcon
import orjson

from api.tracing import event_meta
from api.validation import _UUID_RE, check
from domain.model.base import Meta
from domain.model.errors import (
    HeadersTooLarge,
    InvalidInput,
    InvalidText,
    MalformedBody,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
    UriTooLong,
)
from domain.model.json_input import INT64_MAX, INT64_MIN, check_depth
from domain.model.principal import Principal

BODY_BYTES_MAX = 1_048_576
URI_CHARS_MAX = 8_192  # the request target (path, "?", query) as received
HEADER_BYTES_MAX = 16_384  # all header names and values together
FREE_TEXT_FIELDS = frozenset({"description"})
# The text rule as character classes (the OpenAPI document states its C0 part: api.openapi.TEXT_RULE).
TEXT_FORBIDDEN = "\u0000-\u001f\ud800-\udfff"
FREE_TEXT_FORBIDDEN = "\u0000-\u0008\u000b\u000c\u000e-\u001f\ud800-\udfff"
_BAD_TEXT = re.compile(f"[{TEXT_FORBIDDEN}]")
_BAD_FREE_TEXT = re.compile(f"[{FREE_TEXT_FORBIDDEN}]")
_BAD_HEADER = re.compile(rb"[\x00-\x1f\x7f-\xff]")
DATA_HEADERS = frozenset({b"authorization", b"idempotency-key", b"stripe-signature", b"x-totp-code"})
JSON_MEDIA = "application/json"

# Path parameters the server requires in a shape (every ``{..._id}``: a UUID unless listed);
# the OpenAPI document is generated from the same table.
PATH_ID_PATTERNS = {"credential_id": "^[0-9a-f]{16}$"}
_PATH_ID_RES = {name: re.compile(pattern) for name, pattern in PATH_ID_PATTERNS.items()}
_UUID_MATCH = re.compile(_UUID_RE).match

T = TypeVar("T")


# -- the text rule -------------------------------------------------------------------------
def check_text(value: str, param: str, *, free_text: bool = False) -> str:
    """Refuse a string that is not text by the hub's rule (module docstring)."""
    if not value.isprintable() and (_BAD_FREE_TEXT if free_text else _BAD_TEXT).search(value):
        raise InvalidText(f"{param} must be text: no control characters or lone surrogates", param=param)
    return value


def _path(parents: tuple[Any, ...]) -> str:
    # The root is wrapped as {"": value} so one loop handles it; "" is not part of a path.
    return ".".join(str(p) for p in parents[1:]) or "body"


def check_tree(value: Any) -> None:
    """The text rule on every string and member name of a parsed JSON document, and integers
    within 64 bits (what the store, the projections and orjson hold). Iterative, and a path
    is only built for a container or an offending value (this runs on every debit)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [({"": value}, ())]
    while stack:
        item, where = stack.pop()
        for key, child in item.items() if type(item) is dict else enumerate(item):
            if type(key) is str and not key.isprintable():
                check_text(key, f"{_path(where)} member name")
            kind = type(child)
            if kind is str:
                if not child.isprintable():
                    check_text(child, _path((*where, key)), free_text=key in FREE_TEXT_FIELDS)
            elif kind is dict or kind is list:
                stack.append((child, (*where, key)))
            elif kind is int and not INT64_MIN <= child <= INT64_MAX:
                raise InvalidInput(f"{_path((*where, key))} is outside the 64-bit integer range",
                                   param=_path((*where, key)))


def parse_json(raw: bytes) -> Any:
    """Parse a JSON body by the input rules (module docstring).

    orjson decides the common case (and refuses NUL, raw control bytes, invalid UTF-8 and
    lone surrogate escapes); when it refuses, the standard module, safe once the depth is
    known, tells which rule broke so the answer names it (``invalid_text`` with the field).
    """
    if len(raw) > BODY_BYTES_MAX:
        raise PayloadTooLarge(f"body above {BODY_BYTES_MAX} bytes")
    check_depth(raw)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = _diagnose(raw)
    check_tree(value)
    return value


def _no_constant(name: str) -> Any:
    raise MalformedBody(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise InvalidInput("a number is outside the range of a double")
    return number


def _diagnose(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidText("body must be UTF-8 text", param="body") from None
    if not text.strip():
        raise MalformedBody("send a JSON body (Content-Type: application/json)")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except ValueError:
        raise MalformedBody("body is not valid JSON") from None


# -- the request line, headers and media type ----------------------------------------------
def check_limits(req: falcon.Request) -> None:
    """The sizes of the request target and of the header fields (before routing). Uvicorn's
    own limits sit above these (``ops.serve``), so the answer is a problem, not a bare 400."""
    scope = req.scope
    query = scope.get("query_string") or b""
    if len(scope.get("raw_path") or req.path) + (len(query) + 1 if query else 0) > URI_CHARS_MAX:
        raise UriTooLong(f"path and query above {URI_CHARS_MAX} characters")
    if sum(len(name) + len(value) for name, value in scope.get("headers") or ()) > HEADER_BYTES_MAX:
        raise HeadersTooLarge(f"header fields above {HEADER_BYTES_MAX} bytes in total")


def check_request(req: falcon.Request, params: dict[str, Any], body: tuple[str, bool] | None) -> bool:
    """The input rules for everything but the body, and the body's presence and media type
    against what the operation documents: ``body`` is (media type, required) or None when it
    takes no body. Returns whether a body was sent."""
    for name, value in req.scope.get("headers") or ():
        if name in DATA_HEADERS and _BAD_HEADER.search(value):
            _check_header(name.decode("latin-1"), value)
    for name, value in params.items():
        _check_path_param(name, value)
    query = req.scope.get("query_string")
    if query:
        check_form(query, "query")
    sent = bool(req.content_length) or req.get_header("Transfer-Encoding") is not None
    if body is None:
        if sent:
            raise UnsupportedMediaType("this operation takes no request body")
    elif sent or body[1]:
        _check_media(req, body[0])
    return sent


def _check_header(name: str, value: bytes) -> None:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidText(f"{name} must be UTF-8 text", param=name) from None
    check_text(text, name)


def _check_path_param(name: str, value: str) -> None:
    if name.endswith("_id"):
        shape = _PATH_ID_RES.get(name)
        if not (shape.match(value) if shape is not None else _UUID_MATCH(value)):
            raise InvalidInput(f"{name} has the wrong format", param=name)
    else:
        check_text(value, name)


def check_form(raw: bytes, where: str) -> list[tuple[str, str]]:
    """Decode ``a=1&b=2`` (a query string or an x-www-form-urlencoded body) strictly: valid
    UTF-8 after percent-decoding, every name and value text."""
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidText(f"the {where} must be percent-encoded UTF-8", param=where) from None
    for name, value in pairs:
        check_text(name, where)
        check_text(value, name)
    return pairs


def _check_media(req: falcon.Request, media: str) -> None:
    sent, _, options = (req.content_type or "").partition(";")
    charset = options.strip().lower().removeprefix("charset=").strip('"') if options.strip() else "utf-8"
    if sent.strip().lower() != media or charset != "utf-8":
        raise UnsupportedMediaType(f"send the body as {media} (UTF-8)")


# -- bodies ------------------------------------------------------------------------------------
async def read_body(req: falcon.Request) -> bytes:
    """Read the whole body (at most ``BODY_BYTES_MAX``) into ``req.context.body``, once."""
    body: bytes | None = getattr(req.context, "body", None)
    if body is not None:
        return body
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
    """Parse the body by the input rules and check it against the same schema the OpenAPI
    document publishes, before any command runs."""
    body = parse_json(raw_body(req))
    check(body, schema)
    return body


def request_id(req: falcon.Request) -> str:
    return str(req.context.request_id)


def principal(req: falcon.Request) -> Principal:
    """Authenticate the bearer credential (API key, session/access JWT or device JWT).

    Which kinds and roles a route takes is the authorization table's business
    (``api.authz.ROUTES``, checked before any responder runs), not the responder's."""
    cached = getattr(req.context, "principal", None)
    if cached is None:
        cached = req.context.authenticator.authenticate(req.get_header("Authorization"))
        req.context.principal = cached
    return cached


async def principal_async(req: falcon.Request) -> Principal:
    """``principal`` without blocking the loop: a session token verified before needs no I/O
    and is checked here; anything else (API keys and OAuth access tokens are checked against
    the store for revocation) runs on the thread pool. The authorization middleware has
    usually authenticated the request already: its principal is reused."""
    who = getattr(req.context, "principal", None)
    if who is not None:
        return who
    header = req.get_header("Authorization") or ""
    if header[:7].lower() == "bearer ":
        who = req.context.authenticator.cached_session(header[7:].strip())
    if who is None:
        return await run_sync(req, principal, req)
    req.context.principal = who
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
    """Who acts (the principal, or anonymous), why (this request) and in which trace
    (``traceparent``, on the transaction's trace when the request acts on one)."""
    actor = who.actor if who is not None else "anonymous"
    rid = request_id(req)
    recorded: dict[str, str] = Meta(actor=actor, correlation_id=rid, causation_id=rid).as_dict()
    recorded.update(event_meta(req, who))  # the request's traceparent (api.tracing)
    return recorded


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
