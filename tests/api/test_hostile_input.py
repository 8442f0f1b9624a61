"""Hostile input to every route of the OpenAPI document: deep nesting, NUL, lone surrogates
(raw bytes and JSON escapes), invalid UTF-8, wrong content types and numbers the hub does
not take (1e308, 10**400, 1e3 and -0.0 where integers are expected) are each refused with a
4xx application/problem+json carrying a code, and nothing is recorded (the event log's head
does not move). The routes are walked from /openapi.json, so a new route is covered at once.

Then the reported inputs one by one, and a real ``aimarket serve`` (PostgreSQL, 2 workers):
50 deeply nested bodies kill no worker, the hub keeps its pace, and what the HTTP layer
refuses below the app (oversize target or headers, bad bytes) is problem+json too.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from falcon import testing

from api.app import create_app
from ops.bootstrap import build_runtime
from tests.catalogue.helpers import listing, node, publish
from tests.e2e.test_serve_postgres import pg_hub  # noqa: F401  (fixture: aimarket serve, PostgreSQL, 2 workers)
from tests.helpers import auth, device_jwt, login, register
from tests.stubs import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET, payment_intent_succeeded_event, sign_webhook

PROBLEM = "application/problem+json"
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECTS = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
HUGE = b"1" + b"0" * 400  # 10**400
NUMBERS = (b"1e308", HUGE, b"1e3", b"-0.0")
TEXT_QUERY = ("a%00b", "%ED%A0%80", "%FF", "a%1Fb")  # NUL, a lone surrogate, invalid UTF-8, a C0 control


class Hub:
    """A runtime with the card rail on the Stripe stub, an account (buyer and seller) with a
    session and an API key, an enrolled device, a funded channel and a published listing."""

    def __init__(self, runtime: Any, stub: Any) -> None:
        self.runtime = runtime
        self.client = testing.TestClient(create_app(runtime=runtime))
        seller = register(self.client, roles=["buyer", "seller"])
        self.account_id = seller["id"]
        self.session = login(self.client, seller["email"])
        key = self.client.simulate_post("/v1/api-keys", json={"name": "node"}, headers=auth(self.session)).json
        self.api_key, self.credential_id = key["secret"], key["id"]
        self.node = node(self.client, {**seller, "session": self.session, "api_key": self.api_key})
        published = publish(self.client, self.node, listing("Hostile input"))
        assert published.status_code == 201, published.json
        self.listing_id = published.json["id"]
        self.channel_id = self._funded_channel(stub)

    def _funded_channel(self, stub: Any) -> str:
        r = self.client.simulate_post("/v1/channels", json={"rail": "card", "currency": "USD", "amount_minor": 5000},
                                      headers={**auth(self.session), "Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 201, r.json
        body = payment_intent_succeeded_event(stub.succeed_payment_intent(r.json["payment"]["payment_intent_id"]))
        w = self.client.simulate_post("/v1/webhooks/stripe", body=body, headers={
            "Stripe-Signature": sign_webhook(body, DEFAULT_WEBHOOK_SECRET), "Content-Type": "application/json"})
        assert w.json["credited"] is True, w.json
        return str(r.json["id"])

    def head(self) -> int:
        return self.runtime.market.recorder.max_notification_id() or 0

    def headers_for(self, operation: dict[str, Any]) -> dict[str, str]:
        """The credential the operation takes (so a refusal is the input's, not the caller's)."""
        kinds = operation.get("x-credentials", [])
        out = {"Idempotency-Key": uuid.uuid4().hex}
        if "session" in kinds:
            out.update(auth(self.session))
        elif "device" in kinds:
            out.update(auth(device_jwt(self.node["key"], self.node["id"], int(time.time()))))
        elif "api_key" in kinds:
            out.update(auth(self.api_key))
        return out

    def path(self, template: str, **override: str) -> str:
        ids = {"channel_id": self.channel_id, "listing_id": self.listing_id, "device_id": self.node["id"],
               "credential_id": self.credential_id, **override}
        for name, value in ids.items():
            template = template.replace("{" + name + "}", value)
        return template


@pytest.fixture
def hub(make_settings, store, stripe_stub) -> Iterator[Hub]:
    runtime = build_runtime(make_settings(store, stripe_api_key=DEFAULT_API_KEY,
                                          stripe_webhook_secret=DEFAULT_WEBHOOK_SECRET, stripe_api_base=stripe_stub.url))
    yield Hub(runtime, stripe_stub)
    runtime.close()


def _props(operation: dict[str, Any]) -> list[str]:
    content = operation.get("requestBody", {}).get("content", {})
    schema = next(iter(content.values()), {}).get("schema", {})
    names = set(schema.get("properties", {}))
    for branch in schema.get("oneOf", []):
        names |= set(branch.get("properties", {}))
    return sorted(names) or ["x"]


def _json_object(props: list[str], raw_value: bytes) -> bytes:
    return b"{" + b",".join(json.dumps(p).encode() + b":" + raw_value for p in props) + b"}"


def body_cases(operation: dict[str, Any]) -> Iterator[tuple[str, bytes, str | None]]:
    """(what, body, content type) for an operation that takes a body."""
    content = operation.get("requestBody", {}).get("content", {})
    if not content:
        yield "a body where none is taken", b"{}", "application/json"
        return
    media = next(iter(content))
    if media != "application/json":  # the OAuth token form
        for value in TEXT_QUERY:
            yield f"form value {value}", f"grant_type=client_credentials&client_id={value}&client_secret=s".encode(), media
        yield "a JSON body to a form", b'{"grant_type": "client_credentials"}', "application/json"
        return
    props = _props(operation)
    yield "100,000 nested arrays", DEEP, media
    yield "100,000 nested objects", DEEP_OBJECTS, media
    yield "NUL in every field", _json_object(props, b'"a\\u0000b"'), media
    yield "a lone surrogate escape", _json_object(props, b'"a\\ud800b"'), media
    yield "a lone surrogate as raw bytes", _json_object(props, b'"a\xed\xa0\x80b"'), media
    yield "invalid UTF-8", _json_object(props, b'"a\xffb"'), media
    yield "a control character", _json_object(props, b'"a\\u001bb"'), media
    yield "NUL in a member name", b'{"a\\u0000": 1}', media
    for number in NUMBERS:
        yield f"{number[:8]!r} in every field", _json_object(props, number), media
    yield "text/plain", b"{}", "text/plain"
    yield "no content type", b"{}", None


def query_cases(operation: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for param in operation.get("parameters", []):
        if param["in"] != "query":
            continue
        name, kind = param["name"], param["schema"].get("type")
        for value in TEXT_QUERY:
            yield f"{name}={value}", f"{name}={value}"
        if kind == "integer":
            for number in NUMBERS:
                yield f"{name}={number[:8]!r}", f"{name}={number.decode()}"
    yield "an undocumented name with NUL", "x%00=1"


def path_cases(template: str) -> Iterator[tuple[str, dict[str, str]]]:
    for name in ("channel_id", "listing_id", "device_id", "credential_id"):
        if "{" + name + "}" in template:
            for value in ("%00", "%ED%A0%80", "1e3", quote("ü" * 20), "0" * 200):
                yield f"{name}={value}", {name: value}


def _assert_problem(r: Any, where: str) -> None:
    assert 400 <= r.status_code < 500, (where, r.status_code, r.text[:300])
    assert r.headers.get("content-type") == PROBLEM, (where, r.headers.get("content-type"))
    assert isinstance(r.json.get("code"), str) and r.json["code"], where


def test_every_route_refuses_hostile_input_and_records_nothing(hub: Hub) -> None:
    spec = hub.client.simulate_get("/openapi.json").json
    before, sent = hub.head(), 0
    for template, operations in spec["paths"].items():
        for method, operation in operations.items():
            m = method.upper()
            for what, body, media in body_cases(operation) if "requestBody" in operation or m == "GET" else ():
                headers = {**hub.headers_for(operation), **({"Content-Type": media} if media else {})}
                r = hub.client.simulate_request(m, hub.path(template), body=body, headers=headers)
                _assert_problem(r, f"{m} {template}: {what}")
                sent += 1
            for what, query in query_cases(operation):
                r = hub.client.simulate_request(m, hub.path(template), query_string=query,
                                                headers=hub.headers_for(operation))
                _assert_problem(r, f"{m} {template}?{what}")
                sent += 1
            for what, ids in path_cases(template):
                r = hub.client.simulate_request(m, hub.path(template, **ids), headers=hub.headers_for(operation))
                _assert_problem(r, f"{m} {template} with {what}")
                sent += 1
    assert sent > 500
    assert hub.head() == before, "a refused request recorded an event"


def _escaped(client: Any, method: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    """JSON with non-ASCII escaped (a lone surrogate becomes \\ud800, as a client sends it)."""
    return client.simulate_request(method, path, body=json.dumps(body),
                                   headers={"Content-Type": "application/json", **headers})


def test_the_reported_inputs_are_refused_and_record_nothing(hub: Hub) -> None:
    client, session = hub.client, auth(hub.session)
    before = hub.head()
    titled = publish(client, hub.node, listing("poisoned\u0000title"))
    assert (titled.status_code, titled.json["code"], titled.json["param"]) == (
        422, "invalid_text", "credentialSubject.listing.title")
    r = client.simulate_get("/v1/search", query_string="q=a%00")
    assert (r.status_code, r.json["code"], r.json["param"]) == (422, "invalid_text", "q")
    r = _escaped(client, "POST", "/v1/accounts", {"email": "a\ud800@example.com", "password": "x" * 12}, {})
    assert (r.status_code, r.json["code"], r.json["param"]) == (422, "invalid_text", "email")
    r = _escaped(client, "POST", f"/v1/channels/{hub.channel_id}/debits",
                 {"amount_minor": 1, "seller_account_id": str(uuid.uuid4()), "purpose": "pay\u0000"},
                 {**session, "Idempotency-Key": "k1"})
    assert (r.status_code, r.json["code"], r.json["param"]) == (422, "invalid_text", "purpose")
    r = _escaped(client, "POST", "/v1/api-keys", {"name": "key\u0000"}, session)
    assert (r.status_code, r.json["code"], r.json["param"]) == (422, "invalid_text", "name")
    for amount in (b"1e3", b"1000.0", b"1e308", HUGE):
        r = client.simulate_post("/v1/channels", body=b'{"rail":"card","currency":"USD","amount_minor":' + amount + b"}",
                                 headers={**session, "Idempotency-Key": uuid.uuid4().hex,
                                          "Content-Type": "application/json"})
        assert (r.status_code, r.json["code"], r.json["param"]) == (422, "invalid_input", "amount_minor"), amount
    for path in ("/v1/accounts", "/v1/sessions", "/v1/search", f"/v1/channels/{hub.channel_id}/debits"):
        r = client.simulate_post(path, body=DEEP, headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json["code"]) == (422, "nesting_too_deep"), path
    r = client.simulate_post("/v1/accounts", body=b'{"email": "a@example.com"}', headers={"Content-Type": "text/plain"})
    assert (r.status_code, r.json["code"]) == (415, "unsupported_media_type")
    r = client.simulate_get("/v1/search", query_string="q=" + "a" * 9000)
    assert (r.status_code, r.json["code"]) == (414, "uri_too_long")
    assert hub.head() == before
    # the same title without the NUL is accepted: the refusal was the text rule's
    assert publish(client, hub.node, listing("poisoned title")).status_code == 201


# -- a real server -------------------------------------------------------------------------------
def _workers(master_pid: int, want: int = 2, timeout_s: float = 60) -> set[int]:
    """The gunicorn master's worker pids, once ``want`` of them are up."""
    deadline = time.monotonic() + timeout_s
    while True:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        if len(children) >= want or time.monotonic() > deadline:
            return {int(pid) for pid in children}
        time.sleep(0.2)


def _healthz_burst(url: str, n: int = 200) -> float:
    with requests.Session() as s:
        started = time.perf_counter()
        statuses = [s.get(f"{url}/healthz", timeout=10).status_code for _ in range(n)]
    assert statuses == [200] * n
    return time.perf_counter() - started


def _raw(url: str, request: bytes) -> tuple[int, str, dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    media = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("content-type:"))
    return int(lines[0].split()[1]), media, json.loads(body)


def test_a_real_hub_survives_deep_nesting_and_answers_every_limit_with_a_problem(pg_hub) -> None:  # noqa: F811
    url, proc, _log = pg_hub
    workers = _workers(proc.pid)
    assert len(workers) == 2
    baseline = _healthz_burst(url)
    channel = str(uuid.uuid4())
    targets = ["/v1/accounts", "/v1/sessions", "/v1/search", f"/v1/channels/{channel}/debits"]
    with requests.Session() as s:
        for i in range(50):  # new connections too, so both workers get some
            poster = s if i % 2 else requests
            r = poster.post(url + targets[i % len(targets)], data=DEEP if i % 3 else DEEP_OBJECTS,
                            headers={"Content-Type": "application/json"}, timeout=30)
            assert (r.status_code, r.json()["code"]) == (422, "nesting_too_deep"), r.text[:200]
    assert proc.poll() is None and _workers(proc.pid) == workers, "a worker died"
    after = _healthz_burst(url)
    assert after < max(3 * baseline, 2.0), (baseline, after)
    # What the HTTP layer refuses below the app is a problem too (ops/http_protocol.py).
    cases = [
        (b"GET /v1/search?q=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414, "uri_too_long"),
        (b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Nul: a\x00b\r\n\r\n", 400, "bad_request"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
    ]
    for request, status, code in cases:
        got = _raw(url, request)
        assert got[:2] == (status, PROBLEM) and got[2]["code"] == code, (request[:40], got)
    assert _workers(proc.pid) == workers
