"""A strict loopback stand-in for the parts of the Stripe API we use (no stripe-mock exists here).

Endpoints: ``POST /v1/payment_intents``, ``GET /v1/payment_intents/{id}``,
``POST /v1/transfers``, ``POST /v1/refunds`` (of a succeeded intent, at most what it has left
unrefunded; recorded in :attr:`StripeStub.refunds`). The stub *checks* what it is sent, the way Stripe would (and a little
more strictly): the secret key (Bearer or Basic), a form-encoded body, required and unknown
parameters, a positive integer ``amount``, a lower-case three-letter ``currency``, string
metadata, and an ``Idempotency-Key`` on every POST (``require_idempotency_key``). It replays
idempotent requests like Stripe: the same key with the same method, path and parameters
returns the first response (``Idempotent-Replayed: true``); the same key with anything else
is a 400 ``idempotency_error``. Failed validations and injected failures store nothing, so a
retry with the same key proceeds.

Every request is recorded (:attr:`StripeStub.requests`); :meth:`StripeStub.fail_next` makes
the next N calls answer 500 (or another status) to exercise retries.

Usage::

    with StripeStub(api_key="sk_test_x") as stub:
        gateway = StripeGateway("sk_test_x", "whsec_x", api_base=stub.url)

Tests get a started stub from the ``stripe_stub`` fixture (``tests/stubs``); benches and
local demos start one with ``with StripeStub() as stub``. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

DEFAULT_API_KEY = "sk_test_aimarket_stub"
DEFAULT_WEBHOOK_SECRET = "whsec_aimarket_stub"  # noqa: S105 - the stub's own test secret
API_VERSION = "2025-01-27.acacia"

_CURRENCY = re.compile(r"^[a-z]{3}$")
_INTEGER = re.compile(r"^[0-9]+$")
_PI_PATH = re.compile(r"^/v1/payment_intents/([A-Za-z0-9_]+)$")
_PI_PARAMS = {
    "amount",
    "currency",
    "metadata",
    "automatic_payment_methods",
    "description",
    "customer",
    "payment_method_types",
    "receipt_email",
    "statement_descriptor",
}
_REFUND_PARAMS = {"payment_intent", "amount", "metadata", "reason"}
_TRANSFER_PARAMS = {
    "amount",
    "currency",
    "destination",
    "metadata",
    "transfer_group",
    "description",
}


@dataclass(frozen=True)
class StubRequest:
    """One request as the stub saw it, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    params: dict[str, Any]  # decoded form body (nested for ``a[b]=c``)
    raw_body: bytes
    status: int
    replayed: bool = False

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


class StripeError(Exception):
    """An error answer of the stub, shaped like Stripe's ``{"error": {...}}``."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, "code": code, "param": param}}


@dataclass
class _Stored:
    fingerprint: tuple[Any, ...]
    status: int
    body: dict[str, Any]


@dataclass
class StripeStub:
    """The stub server; start it with ``with`` or :meth:`start`.

    Attributes:
        api_key: The only secret key accepted.
        require_idempotency_key: Refuse POSTs without ``Idempotency-Key`` (Stripe does not,
            but our gateway must always send one).
        known_accounts: When set, the only transfer destinations that exist.
    """

    api_key: str = DEFAULT_API_KEY
    require_idempotency_key: bool = True
    known_accounts: set[str] | None = None
    requests: list[StubRequest] = field(default_factory=list)
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._idempotency: dict[str, _Stored] = {}
        self._failures: list[int] = []
        self._refund_failures: list[str] = []  # reasons for refunds to create already failed
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL to pass as ``api_base`` (``http://127.0.0.1:<port>``)."""
        if self._server is None:
            raise RuntimeError("stub not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StripeStub:
        handler = type("_BoundHandler", (_Handler,), {"stub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> StripeStub:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- test controls ---------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests with ``status`` (``api_error``); store nothing."""
        with self._lock:
            self._failures.extend([status] * count)

    def clear_failures(self) -> None:
        """Cancel failures queued by :meth:`fail_next` that have not happened yet."""
        with self._lock:
            self._failures.clear()

    def requests_to(self, method: str, path: str) -> list[StubRequest]:
        """Recorded requests with this method and path (exact)."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def succeed_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        """Mark an intent paid, as a customer's successful payment would; returns a copy."""
        with self._lock:
            intent = self.payment_intents[payment_intent_id]
            intent["status"] = "succeeded"
            intent["amount_received"] = intent["amount"]
            return json.loads(json.dumps(intent))

    def fail_next_refund(self, reason: str = "expired_or_canceled_card") -> None:
        """Create the next refund already failed (Stripe answers 200 with ``status: failed``)."""
        with self._lock:
            self._refund_failures.append(reason)

    def fail_refund(self, refund_id: str, reason: str = "expired_or_canceled_card") -> dict[str, Any]:
        """Fail an accepted refund, as the card network can days later (the card was closed):
        the money returns to the platform's balance. Returns a copy of the refund."""
        with self._lock:
            refund = self.refunds[refund_id]
            assert refund["status"] == "succeeded", f"{refund_id} is {refund['status']}"
            refund["status"], refund["failure_reason"] = "failed", reason
            self.payment_intents[refund["payment_intent"]]["amount_refunded"] -= refund["amount"]
            return json.loads(json.dumps(refund))

    # -- request handling (called from the handler threads) --------------------------------

    def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        params: dict[str, Any] = {}
        replayed = False
        status, payload = 500, {}
        try:
            self._check_auth(headers.get("authorization", ""))
            if method == "POST":
                params = _decode_form(headers.get("content-type", ""), body)
            with self._lock:
                if self._failures:
                    failure = self._failures.pop(0)
                    raise StripeError(failure, "api_error", "Injected failure from the stub")
                status, payload, replayed = self._route(method, path, headers, params, body)
        except StripeError as exc:
            status, payload = exc.status, exc.body
        extra = {"Idempotent-Replayed": "true"} if replayed else {}
        with self._lock:
            self.requests.append(StubRequest(method, path, dict(headers), params, body, status, replayed))
        return status, payload, extra

    def _check_auth(self, authorization: str) -> None:
        scheme, _, credential = authorization.partition(" ")
        key = None
        if scheme.lower() == "bearer":
            key = credential.strip()
        elif scheme.lower() == "basic":
            try:
                key = base64.b64decode(credential.strip()).decode().partition(":")[0]
            except ValueError:
                key = None
        if not key or not hmac.compare_digest(key.encode(), self.api_key.encode()):
            raise StripeError(401, "invalid_request_error", "Invalid API Key provided")

    def _route(
        self, method: str, path: str, headers: dict[str, str], params: dict[str, Any], body: bytes
    ) -> tuple[int, dict[str, Any], bool]:
        match = _PI_PATH.match(path)
        if method == "GET" and match:
            intent = self.payment_intents.get(match.group(1))
            if intent is None:
                raise StripeError(
                    404,
                    "invalid_request_error",
                    f"No such payment_intent: '{match.group(1)}'",
                    code="resource_missing",
                    param="intent",
                )
            return 200, json.loads(json.dumps(intent)), False
        creators = {"/v1/payment_intents": self._create_intent, "/v1/transfers": self._create_transfer,
                    "/v1/refunds": self._create_refund}
        if method == "POST" and path in creators:
            key = headers.get("idempotency-key")
            if key is None and self.require_idempotency_key:
                raise StripeError(400, "invalid_request_error", "Idempotency-Key header required by the stub")
            fingerprint = (
                method,
                path,
                tuple(sorted(parse_qsl(body.decode(), keep_blank_values=True))),
            )
            stored = self._idempotency.get(key) if key else None
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    raise StripeError(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with.",
                    )
                return stored.status, json.loads(json.dumps(stored.body)), True
            obj = creators[path](params)
            if key:
                self._idempotency[key] = _Stored(fingerprint, 200, obj)
            return 200, json.loads(json.dumps(obj)), False
        raise StripeError(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")

    def _create_intent(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(params, _PI_PARAMS)
        amount, currency = _check_money(params)
        metadata = _check_metadata(params)
        intent_id = "pi_" + secrets.token_hex(12)
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "currency": currency,
            "metadata": metadata,
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "status": "requires_payment_method",
            "created": int(time.time()),
            "livemode": False,
        }
        self.payment_intents[intent_id] = intent
        return intent

    def _create_refund(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(params, _REFUND_PARAMS)
        metadata = _check_metadata(params)
        intent_id = params.get("payment_intent")
        if not isinstance(intent_id, str) or not intent_id:
            raise StripeError(400, "invalid_request_error", "Missing required param: payment_intent.",
                              code="parameter_missing", param="payment_intent")
        intent = self.payment_intents.get(intent_id)
        if intent is None:
            raise StripeError(400, "invalid_request_error", f"No such payment_intent: '{intent_id}'",
                              code="resource_missing", param="payment_intent")
        if intent["status"] != "succeeded":
            raise StripeError(400, "invalid_request_error", "This PaymentIntent has no successful charge to refund.",
                              code="charge_not_refundable", param="payment_intent")
        left = intent["amount_received"] - intent.get("amount_refunded", 0)
        if left <= 0:
            raise StripeError(400, "invalid_request_error", f"Charge for {intent_id} has already been refunded.",
                              code="charge_already_refunded")
        amount = params.get("amount", str(left))  # Stripe refunds the rest when no amount is given
        if not isinstance(amount, str) or not _INTEGER.match(amount) or int(amount) <= 0:
            raise StripeError(400, "invalid_request_error", "Invalid positive integer",
                              code="parameter_invalid_integer", param="amount")
        if int(amount) > left:
            raise StripeError(400, "invalid_request_error",
                              f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                              code="amount_too_large", param="amount")
        intent["amount_refunded"] = intent.get("amount_refunded", 0) + int(amount)
        refund = {
            "id": "re_" + secrets.token_hex(12),
            "object": "refund",
            "amount": int(amount),
            "currency": intent["currency"],
            "payment_intent": intent_id,
            "metadata": metadata,
            "status": "succeeded",
            "created": int(time.time()),
        }
        if self._refund_failures:  # Stripe can answer a refund that failed at once
            refund["status"], refund["failure_reason"] = "failed", self._refund_failures.pop(0)
            intent["amount_refunded"] -= int(amount)
        self.refunds[refund["id"]] = refund
        return refund

    def _create_transfer(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(params, _TRANSFER_PARAMS)
        amount, currency = _check_money(params)
        metadata = _check_metadata(params)
        destination = params.get("destination")
        if not isinstance(destination, str) or not destination:
            raise StripeError(
                400,
                "invalid_request_error",
                "Missing required param: destination.",
                code="parameter_missing",
                param="destination",
            )
        if not destination.startswith("acct_") or (
            self.known_accounts is not None and destination not in self.known_accounts
        ):
            raise StripeError(
                400,
                "invalid_request_error",
                f"No such destination: '{destination}'",
                code="resource_missing",
                param="destination",
            )
        transfer = {
            "id": "tr_" + secrets.token_hex(12),
            "object": "transfer",
            "amount": amount,
            "amount_reversed": 0,
            "currency": currency,
            "destination": destination,
            "metadata": metadata,
            "reversed": False,
            "created": int(time.time()),
            "livemode": False,
        }
        self.transfers[transfer["id"]] = transfer
        return transfer


class _Handler(BaseHTTPRequestHandler):
    stub: StripeStub
    server_version = "stripe-stub/1"

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = self.path.split("?", 1)[0]
        status, payload, extra = self.stub._handle(method, path, headers, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", "req_" + secrets.token_hex(8))
        if "idempotency-key" in headers:
            self.send_header("Idempotency-Key", headers["idempotency-key"])
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


def _decode_form(content_type: str, body: bytes) -> dict[str, Any]:
    """Decode Stripe's form encoding (``metadata[key]=v``) into nested dicts."""
    if body and not content_type.startswith("application/x-www-form-urlencoded"):
        raise StripeError(
            400,
            "invalid_request_error",
            f"Content-Type must be application/x-www-form-urlencoded, not {content_type!r}",
        )
    out: dict[str, Any] = {}
    for raw_key, value in parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body)):
        parts = re.findall(r"[^\[\]]+", raw_key)
        if not parts:
            raise StripeError(400, "invalid_request_error", f"Invalid parameter name {raw_key!r}")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise StripeError(400, "invalid_request_error", f"Invalid parameter {raw_key!r}")
            node = child
        node[parts[-1]] = value
    return out


def _check_known(params: dict[str, Any], allowed: set[str]) -> None:
    for name in params:
        if name not in allowed:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Received unknown parameter: {name}",
                code="parameter_unknown",
                param=name,
            )


def _check_money(params: dict[str, Any]) -> tuple[int, str]:
    for name in ("amount", "currency"):
        if name not in params:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Missing required param: {name}.",
                code="parameter_missing",
                param=name,
            )
    amount = params["amount"]
    if not isinstance(amount, str) or not _INTEGER.match(amount) or int(amount) <= 0:
        raise StripeError(
            400,
            "invalid_request_error",
            "Invalid positive integer",
            code="parameter_invalid_integer",
            param="amount",
        )
    currency = params["currency"]
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise StripeError(
            400,
            "invalid_request_error",
            f"Invalid currency: {currency}",
            code="parameter_invalid_string",
            param="currency",
        )
    return int(amount), currency


def _check_metadata(params: dict[str, Any]) -> dict[str, str]:
    metadata = params.get("metadata", {})
    if not isinstance(metadata, dict) or any(not isinstance(v, str) for v in metadata.values()):
        raise StripeError(400, "invalid_request_error", "Invalid metadata", param="metadata")
    return dict(metadata)


# -- webhooks ------------------------------------------------------------------------------


def sign_webhook(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header: ``t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<payload>")>``."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    signed = str(ts).encode() + b"." + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def payment_intent_succeeded_event(
    pi: dict[str, Any], *, event_id: str | None = None, created: int | None = None
) -> bytes:
    """The JSON body of a ``payment_intent.succeeded`` event for ``pi`` (marked succeeded)."""
    intent = json.loads(json.dumps(pi))
    intent["status"] = "succeeded"
    intent["amount_received"] = intent.get("amount", 0)
    return webhook_event("payment_intent.succeeded", intent, event_id=event_id, created=created)


def webhook_event(kind: str, obj: dict[str, Any], *, event_id: str | None = None, created: int | None = None) -> bytes:
    """The JSON body of a Stripe event of type ``kind`` about ``obj`` (e.g. ``refund.failed``)."""
    event = {
        "id": event_id or "evt_" + secrets.token_hex(12),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()) if created is None else created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }
    return json.dumps(event, separators=(",", ":")).encode()
