"""Who may call what: every served route is in the one table (api/authz.py) and in docs/api.md,
each credential kind gets exactly the table's outcome on every route, and no escalation path
exists (keys cannot mint keys, debit outside their scopes or move where earnings go)."""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyotp
import pytest
from freezegun import freeze_time

from api.app import route_table
from api.authz import ANONYMOUS, ROUTES, TOTP_HEADER, Need, annotate_spec
from api.openapi import build_spec
from domain.model.account import ROLES
from tests.api.test_openapi import router_routes
from tests.helpers import PASSWORD, auth, device_jwt, enroll, login, register, seller_with_key

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
AUTHZ_CODES = {"unauthenticated", "forbidden", "insufficient_scope", "reauthentication_required"}
# Declared ahead of the route landing in api/app.py (the metrics resource, another change).
NOT_YET_SERVED: set[tuple[str, str]] = set()
SCOPE_SETS = {"none": [], "buyer": ["buyer"], "seller": ["seller"], "buyer+seller": ["buyer", "seller"]}
SQLITE = pytest.mark.parametrize("store", ["sqlite"], indirect=True)
META = {"actor": "test", "correlation_id": "t", "causation_id": ""}


# -- one table, in code and in the docs, covering every route -----------------------------------
def test_every_served_route_is_in_the_table(client) -> None:
    served = {(method.upper(), template) for template, method in router_routes(client.app)}
    assert served, "router walk found nothing"
    assert served - set(ROUTES) == set(), "routes with no declared needs"
    assert set(ROUTES) - served <= NOT_YET_SERVED, "table entries no route serves"


def _docs_table() -> dict[tuple[str, str], Need]:
    text = DOCS.read_text(encoding="utf-8").split("## Scopes", 1)[1].split("\n## ", 1)[0]
    found = {}
    for m in re.finditer(r"^\| (GET|POST|PUT|DELETE|PATCH) \| `([^`]+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$",
                         text, re.M):
        method, route, kinds, roles, recent = (g.strip() for g in m.groups())
        found[(method, route)] = Need(tuple(k.strip() for k in kinds.split(",")),
                                      () if roles == "—" else tuple(r.strip() for r in roles.split(",")),
                                      recent == "yes")
    return found


def test_the_docs_table_is_the_code_table() -> None:
    assert _docs_table() == ROUTES


def test_the_openapi_document_says_the_same() -> None:
    unwired = SimpleNamespace(market=None, views=None, debit_batcher=None, enqueue_settlement=None,
                              settings=SimpleNamespace(store="", hub_name="", hub_url=""))
    spec = annotate_spec(build_spec(route_table(unwired), title="t", version="0", server_url="http://hub.test"))
    seen = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            need = ROUTES[(method.upper(), path)]
            seen += 1
            assert operation["x-credentials"] == list(need.kinds)
            assert operation["x-roles"] == list(need.roles)
            assert operation["x-recent-login"] is need.recent
            names = [p["name"] for p in operation.get("parameters", [])]
            assert (TOTP_HEADER in names) is need.recent
            if need.public:
                assert "security" not in operation
            else:
                assert ({} in operation["security"]) is (ANONYMOUS in need.kinds)
    assert seen == len(ROUTES) - 1  # /openapi.json is added by create_app, not the route table
    scopes = spec["paths"]["/v1/api-keys"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert scopes["properties"]["scopes"]["items"]["enum"] == list(ROLES)
    form = spec["paths"]["/v1/oauth/token"]["post"]["requestBody"]["content"]
    assert form["application/x-www-form-urlencoded"]["schema"]["properties"]["grant_type"]["enum"] == [
        "client_credentials"]


# -- the matrix: every route x every credential kind ---------------------------------------------
@dataclass
class Caller:
    name: str
    kind: str
    roles: tuple[str, ...]
    header: Any  # () -> headers (a device token is single-use: a fresh one per request)
    credential_id: str = ""


def _mint(client, session: str, path: str, scopes: list[str] | None) -> dict[str, Any]:
    body = {"name": "k"} if scopes is None else {"name": "k", "scopes": scopes}
    r = client.simulate_post(path, json=body, headers=auth(session))
    assert r.status_code == 201, r.json
    return r.json


def _callers(client, runtime) -> list[Caller]:
    buyer, seller = register(client, roles=["buyer"]), register(client, roles=["seller"])
    owner = seller_with_key(client)  # buyer + seller
    auditor = register(client, roles=["buyer"])
    runtime.market.identity.grant_role(META, auditor["email"], "auditor")
    callers = [Caller("anonymous", ANONYMOUS, (), dict),
               Caller("session buyer", "session", ("buyer",), lambda t=login(client, buyer["email"]): auth(t)),
               Caller("session seller", "session", ("seller",), lambda t=login(client, seller["email"]): auth(t)),
               Caller("session auditor", "session", ("auditor", "buyer"),
                      lambda t=login(client, auditor["email"]): auth(t))]
    for name, scopes in SCOPE_SETS.items():
        key = _mint(client, owner["session"], "/v1/api-keys", scopes)
        callers.append(Caller(f"api key {name}", "api_key", tuple(scopes), lambda s=key["secret"]: auth(s), key["id"]))
    agent = _mint(client, owner["session"], "/v1/oauth/clients", ["buyer"])
    r = client.simulate_post("/v1/oauth/token", body=f"grant_type=client_credentials&client_id={agent['id']}"
                             f"&client_secret={agent['secret']}",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.json
    callers.append(Caller("oauth client buyer", "oauth_client", ("buyer",),
                          lambda t=r.json["access_token"]: auth(t), agent["id"]))
    device = enroll(client, owner)
    callers.append(Caller("device", "device", ("buyer", "seller"),
                          lambda: auth(device_jwt(device["key"], device["id"], int(time.time()))),
                          device["id"]))
    return callers, device["id"]


def expected(need: Need, caller: Caller) -> tuple[int, str] | None:
    """What the table says: None (let through) or the refusal."""
    if need.public:
        return None
    if caller.kind == ANONYMOUS:
        return None if ANONYMOUS in need.kinds else (401, "unauthenticated")
    if caller.kind not in need.kinds:
        return 403, "forbidden"
    if need.roles and not set(need.roles) & set(caller.roles):
        return 403, "insufficient_scope" if caller.kind in ("api_key", "oauth_client") else "forbidden"
    return None


def _path(template: str, caller: Caller, device_id: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "device_id":
            return device_id
        if name == "credential_id":
            owns = template.startswith("/v1/api-keys") == (caller.kind == "api_key")
            return caller.credential_id if caller.kind in ("api_key", "oauth_client") and owns else "0" * 16
        return str(uuid.uuid4())

    return re.sub(r"\{(\w+)\}", value, template)


def _revokes_itself(method: str, template: str, caller: Caller) -> bool:
    return method == "DELETE" and "{credential_id}" in template and \
        _path(template, caller, "").endswith(f"/{caller.credential_id}")


@SQLITE
def test_each_credential_gets_exactly_the_declared_outcome(client, runtime) -> None:
    callers, device_id = _callers(client, runtime)
    outcomes = {"let through": 0, "refused": 0}
    for caller in callers:
        # a credential revoking itself goes last: after it, it is (rightly) unauthenticated
        routes = sorted(ROUTES.items(), key=lambda item, c=caller: _revokes_itself(*item[0], c))
        for (method, template), need in routes:
            if (method, template) in NOT_YET_SERVED:
                continue
            body = None if method == "GET" else {}
            r = client.simulate_request(method, _path(template, caller, device_id), json=body,
                                        headers=caller.header())
            code = (r.json or {}).get("code") if r.status_code >= 400 else None
            want = expected(need, caller)
            where = f"{caller.name} {method} {template}: {r.status_code} {code}"
            if want is None:
                outcomes["let through"] += 1
                assert not (r.status_code in (401, 403) and code in AUTHZ_CODES), where
                assert r.status_code < 500, where
            else:
                outcomes["refused"] += 1
                assert (r.status_code, code) == want, where
    assert outcomes["let through"] > 100 and outcomes["refused"] > 100, outcomes


# -- no escalation --------------------------------------------------------------------------------
def _key(client, session: str, scopes: list[str]) -> str:
    return _mint(client, session, "/v1/api-keys", scopes)["secret"]


@SQLITE
def test_a_seller_key_cannot_mint_debit_or_redirect_earnings(client) -> None:
    owner = seller_with_key(client)
    seller_key = _key(client, owner["session"], ["seller"])
    minted = client.simulate_post("/v1/api-keys", json={"name": "x", "scopes": ["buyer"]}, headers=auth(seller_key))
    assert (minted.status_code, minted.json["code"]) == (403, "forbidden")
    for path in ("/v1/oauth/clients", "/v1/api-keys"):
        r = client.simulate_post(path, json={"name": "x"}, headers=auth(seller_key))
        assert (r.status_code, r.json["code"]) == (403, "forbidden")
    channel = str(uuid.uuid4())
    for suffix in ("debits", "top-ups", "close"):
        r = client.simulate_post(f"/v1/channels/{channel}/{suffix}", headers={**auth(seller_key), "Idempotency-Key": "k"},
                                 json={"amount_minor": 1, "seller_account_id": owner["id"]})
        assert (r.status_code, r.json["code"]) == (403, "insufficient_scope"), suffix
    for path, body in (("/v1/me/payout-destination", {"stripe_account": "acct_thief"}),
                       ("/v1/me/wallet", {"address": "0x" + "11" * 20, "signature": "0x" + "22" * 65})):
        r = client.simulate_post(path, json=body, headers=auth(seller_key))
        assert (r.status_code, r.json["code"]) == (403, "forbidden"), path
    # a device of the account cannot either
    device = enroll(client, owner)
    r = client.simulate_post("/v1/me/payout-destination", json={"stripe_account": "acct_thief"},
                             headers=auth(device_jwt(device["key"], device["id"], int(time.time()))))
    assert (r.status_code, r.json["code"]) == (403, "forbidden")


@SQLITE
def test_minting_never_exceeds_the_callers_roles(client) -> None:
    buyer = register(client, roles=["buyer"])
    session = login(client, buyer["email"])
    r = client.simulate_post("/v1/api-keys", json={"name": "x", "scopes": ["buyer", "seller"]}, headers=auth(session))
    assert (r.status_code, r.json["code"], r.json["param"]) == (403, "insufficient_scope", "scopes")
    default = _mint(client, session, "/v1/api-keys", None)
    assert default["scopes"] == ["buyer"]
    empty = _mint(client, session, "/v1/api-keys", [])
    assert empty["scopes"] == []
    me = client.simulate_get("/v1/me", headers=auth(empty["secret"]))
    assert me.status_code == 200  # a key of no scope authenticates the account for role-free routes
    r = client.simulate_get("/v1/channels", headers=auth(empty["secret"]))
    assert (r.status_code, r.json["code"]) == (403, "insufficient_scope")
    dup = client.simulate_post("/v1/api-keys", json={"name": "x", "scopes": ["buyer", "buyer"]}, headers=auth(session))
    assert dup.status_code == 422  # the document says uniqueItems


@SQLITE
def test_a_buyer_key_cannot_publish_or_enroll(client) -> None:
    owner = seller_with_key(client)
    buyer_key = _key(client, owner["session"], ["buyer"])
    r = client.simulate_post("/v1/listings", json={}, headers=auth(buyer_key))
    assert (r.status_code, r.json["code"]) == (403, "forbidden")  # publishing takes a device token
    for path in ("/v1/devices/challenges", "/v1/devices"):
        r = client.simulate_post(path, json={}, headers=auth(buyer_key))
        assert (r.status_code, r.json["code"]) == (403, "insufficient_scope"), path


@SQLITE
def test_oauth_tokens_stay_within_the_clients_scopes(client) -> None:
    owner = seller_with_key(client)
    agent = _mint(client, owner["session"], "/v1/oauth/clients", ["buyer"])
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    base = f"grant_type=client_credentials&client_id={agent['id']}&client_secret={agent['secret']}"
    wider = client.simulate_post("/v1/oauth/token", body=base + "&scope=buyer+seller", headers=form)
    assert (wider.status_code, wider.json["code"]) == (403, "insufficient_scope")
    bad = client.simulate_post("/v1/oauth/token", body=base + "&scope=root", headers=form)
    assert (bad.status_code, bad.json["param"]) == (422, "scope")
    narrow = client.simulate_post("/v1/oauth/token", body=base + "&scope=buyer", headers=form)
    assert narrow.status_code == 200 and narrow.json["scope"] == "buyer"
    token = narrow.json["access_token"]
    r = client.simulate_post("/v1/devices/challenges", json={}, headers=auth(token))
    assert (r.status_code, r.json["code"]) == (403, "forbidden")
    r = client.simulate_get("/v1/statements", headers=auth(token))
    assert (r.status_code, r.json["code"]) == (403, "insufficient_scope")


@SQLITE
def test_a_key_revokes_only_itself(client) -> None:
    owner = seller_with_key(client)
    keep, other = _mint(client, owner["session"], "/v1/api-keys", []), _mint(client, owner["session"], "/v1/api-keys", [])
    r = client.simulate_delete(f"/v1/api-keys/{keep['id']}", headers=auth(other["secret"]))
    assert (r.status_code, r.json["code"]) == (403, "forbidden")
    assert client.simulate_get("/v1/me", headers=auth(keep["secret"])).status_code == 200
    assert client.simulate_delete(f"/v1/api-keys/{other['id']}", headers=auth(other["secret"])).status_code == 204
    assert client.simulate_get("/v1/me", headers=auth(other["secret"])).status_code == 401


# -- sensitive changes need a recent login (or a TOTP code) ---------------------------------------
@SQLITE
def test_sensitive_changes_need_a_recent_login_or_a_totp_code(client) -> None:
    account = register(client, roles=["seller"])
    with freeze_time("2026-03-01T10:00:00Z") as frozen:
        session = login(client, account["email"])
        frozen.tick(14 * 60)
        assert client.simulate_post("/v1/api-keys", json={"name": "a"}, headers=auth(session)).status_code == 201
        frozen.tick(2 * 60)  # 16 minutes after login
        for path, body in (("/v1/api-keys", {"name": "b"}), ("/v1/oauth/clients", {"name": "b"}),
                           ("/v1/me/payout-destination", {"stripe_account": "acct_x"}), ("/v1/me/totp", {})):
            r = client.simulate_post(path, json=body, headers=auth(session))
            assert (r.status_code, r.json["code"]) == (401, "reauthentication_required"), path
        no_2fa = client.simulate_post("/v1/api-keys", json={"name": "b"}, headers={**auth(session), TOTP_HEADER: "123456"})
        assert (no_2fa.status_code, no_2fa.json["code"]) == (401, "reauthentication_required")
        malformed = client.simulate_post("/v1/api-keys", json={"name": "b"}, headers={**auth(session), TOTP_HEADER: "12"})
        assert (malformed.status_code, malformed.json["param"]) == (422, TOTP_HEADER)

        fresh = login(client, account["email"])
        totp = pyotp.TOTP(client.simulate_post("/v1/me/totp", headers=auth(fresh)).json["secret"])
        assert client.simulate_post("/v1/me/totp/confirm", json={"code": totp.now()},
                                    headers=auth(fresh)).status_code == 200
        frozen.tick(20 * 60)
        wrong = client.simulate_post("/v1/me/payout-destination", json={"stripe_account": "acct_x"},
                                     headers={**auth(fresh), TOTP_HEADER: "000000"})
        assert (wrong.status_code, wrong.json["code"]) == (401, "totp_required")
        ok = client.simulate_post("/v1/me/payout-destination", json={"stripe_account": "acct_x"},
                                  headers={**auth(fresh), TOTP_HEADER: totp.now()})
        assert ok.status_code == 201, ok.json


# -- device views: strangers see keys, owners see the rest ------------------------------------------
OWNER_ONLY = {"account_id", "name", "endpoint", "suspended"}


@SQLITE
def test_public_device_view_holds_only_what_a_stranger_needs(client) -> None:
    owner, stranger = seller_with_key(client), seller_with_key(client)
    device = enroll(client, owner)
    path = f"/v1/devices/{device['id']}"
    public = client.simulate_get(path)
    assert public.status_code == 200
    assert set(public.json) == {"id", "status", "kid", "public_key", "kx_public_key", "keys"}
    assert public.json["status"] == "active" and public.json["public_key"] == device["public_key"]
    assert set(client.simulate_get(path, headers=auth(stranger["session"])).json) == set(public.json)
    token = device_jwt(device["key"], device["id"], int(time.time()))
    for headers in (auth(owner["session"]), auth(owner["api_key"]), auth(token)):
        view = client.simulate_get(path, headers=headers).json
        assert OWNER_ONLY <= set(view) and view["endpoint"] == "http://127.0.0.1:9090"
    assert client.simulate_get(path, headers=auth("aim_nonsense")).status_code == 401


# -- inputs the document describes ------------------------------------------------------------------
def _post_escaped(client, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """POST JSON with non-ASCII escaped (\\uXXXX), as a client sends a lone surrogate."""
    return client.simulate_post(path, body=json.dumps(body), headers={"Content-Type": "application/json",
                                                                      **(headers or {})})


@SQLITE
def test_emails_are_validated_and_normalised(client) -> None:
    for bad in ("a\ud800@example.com", "nobody@localhost", "x@host.test", '"q"@example.com', "a@[127.0.0.1]"):
        r = _post_escaped(client, "/v1/accounts", {"email": bad, "password": PASSWORD})
        assert r.status_code == 422 and r.json["param"] == "email", bad
        login_r = _post_escaped(client, "/v1/sessions", {"email": bad, "password": PASSWORD})
        # a lone surrogate is not text: the one input rule refuses it first (422 invalid_text)
        assert login_r.status_code == (422 if "\ud800" in bad else 401), bad
    assert register(client, "  Mixed.Case@Example.COM ")["email"] == "mixed.case@example.com"
    assert register(client, "ünï@bücher.example")["email"] == "ünï@bücher.example"
    assert login(client, "MIXED.case@example.com")
    surrogate_password = _post_escaped(client, "/v1/sessions", {"email": "mixed.case@example.com",
                                                                "password": "x\ud800" * 6})
    assert (surrogate_password.status_code, surrogate_password.json["code"]) == (422, "invalid_text")


@SQLITE
def test_device_endpoint_and_names_follow_the_published_patterns(client) -> None:
    owner = seller_with_key(client)
    challenge = client.simulate_post("/v1/devices/challenges", json={}, headers=auth(owner["api_key"])).json
    base = {"challenge": challenge["challenge"], "name": "n", "endpoint": "http://127.0.0.1:9090",
            "public_key": "z6Mk" + "1" * 44, "kx_public_key": "z6LS" + "1" * 44, "signature": "A" * 86}
    for field, value in (("endpoint", "http://user@host"), ("endpoint", "http://h/?q=1"), ("endpoint", "ftp://h"),
                         ("endpoint", "http://h:65536"), ("name", "nœud"), ("name", "a\nb")):
        r = _post_escaped(client, "/v1/devices", {**base, field: value}, auth(owner["api_key"]))
        assert (r.status_code, r.json["param"]) == (422, field), (field, value)
    r = _post_escaped(client, "/v1/api-keys", {"name": "k\ud800"}, auth(owner["session"]))
    assert r.status_code == 422 and r.json["param"] == "name"
