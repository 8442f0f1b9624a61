"""The authorization matrix (issue 13, point 6): every route of the OpenAPI document, tried
against real data of one owner by the owner, another buyer, another seller, a device of
another account, an auditor and an anonymous caller, each cell held to the one declared table
(``tests/api/authz_matrix.py``). Any unexpected allow fails, and so does a refusal of the owner;
an allowed answer to anyone but the owner carries none of the owner's private values; a refused
write records nothing (the event log's head does not move); an allowed write by another actor
touches none of the owner's aggregates. A route the document gains without a row fails.

``tests/api/test_scopes.py`` holds the other matrix (credential kinds and scopes per route);
this one is about whose data. Embedded store, the card rail on the loopback Stripe stub."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from falcon import testing

from api.app import create_app
from api.authz import ANONYMOUS, ROUTES
from ops.bootstrap import build_runtime
from ops.settings import Settings
from tests.api.authz_matrix import ACTORS, ALL, ALLOW, KNOWN_LEAKS, MATRIX, RECORDED_ON_REFUSAL
from tests.api.authz_world import HUB, REQUESTS, build_world
from tests.stubs import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET, StripeStub


# -- the world, once for the module ----------------------------------------------------------------
def _loopback(host: object) -> bool:
    return isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost"))


@pytest.fixture(scope="module")
def loopback_only():
    """Only loopback (the Stripe stub, Redis): any other connection or name look-up fails the test."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            raise AssertionError(f"network access attempted: {address!r}")
        return real_connect(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _loopback(host):
            raise AssertionError(f"name look-up attempted: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory, loopback_only):
    with StripeStub() as stub:
        settings = Settings(data_dir=tmp_path_factory.mktemp("authz") / "data", secret_hex="ef" * 32,
                            bcrypt_rounds=4, hub_url=HUB, log_format="json", stripe_api_key=DEFAULT_API_KEY,
                            stripe_webhook_secret=DEFAULT_WEBHOOK_SECRET, stripe_api_base=stub.url)
        runtime = build_runtime(settings)
        try:
            client = testing.TestClient(create_app(runtime=runtime))
            yield build_world(client, runtime, stub)
        finally:
            runtime.close()


def test_every_route_of_the_document_has_a_row(world) -> None:
    spec = world.client.simulate_get("/openapi.json").json
    documented = {(method.upper(), path) for path, operations in spec["paths"].items() for method in operations}
    assert documented - set(MATRIX) == set(), "routes of /openapi.json with no declared outcomes"
    assert set(MATRIX) - documented == set(), "rows of the matrix for routes the document does not have"
    assert set(REQUESTS) == set(MATRIX)
    for route, cells in MATRIX.items():
        assert set(cells) == set(ACTORS), route
        # the owner may use every route but the auditors' log (and a public refusal, the same for all)
        same_for_all = len({repr(cell) for cell in cells.values()}) == 1
        assert cells["owner"] == ALLOW or same_for_all or route == ("GET", "/v1/audit/events"), route
        # the anonymous column says what api/authz.py says: served, or 401 unauthenticated
        anonymous_served = ANONYMOUS in ROUTES[route].kinds
        assert (cells["anonymous"] != (401, "unauthenticated")) is anonymous_served, route


def _cells() -> list[Any]:
    cells = []
    for (method, template) in MATRIX:
        for actor in ACTORS:
            reason = KNOWN_LEAKS.get(((method, template), actor))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cells.append(pytest.param(method, template, actor, id=f"{method} {template} as {actor}", marks=marks))
    return cells


@pytest.mark.parametrize(("method", "template", "actor"), _cells())
def test_each_cell_gets_its_declared_outcome(world, method: str, template: str, actor: str) -> None:
    want = MATRIX[(method, template)][actor]
    request = REQUESTS[(method, template)](world, actor)
    headers = {**world.headers(actor, ROUTES[(method, template)]), **request.headers}
    world.catch_up()  # the read models hold everything so far: a leak shows
    head = world.head()
    r = world.client.simulate_request(method, request.path, json=request.json, body=request.body,
                                      params=request.params, headers=headers)
    code = (r.json or {}).get("code") if r.status_code >= 400 and r.text.startswith("{") else None
    where = f"{actor} {method} {template}: {r.status_code} {code} {r.text[:300]}"
    added = world.since(head)
    if want in (ALLOW, ALL):
        assert 200 <= r.status_code < 300, f"refused, declared {want}: {where}"
        secret = world.secrets - world.auditable if want == ALL else world.secrets
        leaked = {v for v in secret if v in r.text} if actor != "owner" else set()
        if want == ALLOW and actor != "owner":
            leaked |= {v for v in world.private if v in r.text}
        assert not leaked, f"the owner's values in the answer to {where}: {sorted(leaked)}"
        if actor == "owner":
            assert request.owner_sees is None or request.owner_sees in r.text, f"owner's data missing: {where}"
            if request.after is not None:
                request.after(r)
        else:
            touched = {str(n.originator_id) for n in added} & world.owned
            assert not touched, f"{where} changed the owner's aggregates {sorted(touched)}"
    else:
        assert (r.status_code, code) == want, f"declared {want}: {where}"
        allowed_topic = RECORDED_ON_REFUSAL.get(((method, template), actor))
        recorded = [n.topic for n in added if n.topic != allowed_topic]
        assert recorded == [], f"a refusal recorded {recorded}: {where}"
        assert not {str(n.originator_id) for n in added} & world.owned, where
