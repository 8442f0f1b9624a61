"""Identity through the HTTP API, on the embedded store and on PostgreSQL."""

from __future__ import annotations

import base64
import json

import pyotp
from freezegun import freeze_time

from tests.helpers import PASSWORD, auth, login, register, run_concurrently


def test_register_login_me(client) -> None:
    account = register(client, "Newcomer@Example.com", ["buyer"])
    assert account["email"] == "newcomer@example.com"
    token = login(client, "newcomer@example.com")
    r = client.simulate_get("/v1/me", headers=auth(token))
    assert r.status_code == 200
    assert r.json["account"]["roles"] == ["buyer"]


def test_duplicate_email_is_a_clear_conflict(client) -> None:
    register(client, "dup@example.com")
    r = client.simulate_post("/v1/accounts", json={"email": "DUP@example.com", "password": PASSWORD})
    assert r.status_code == 409
    assert r.json["code"] == "already_exists"
    assert r.headers["content-type"] == "application/problem+json"


def test_concurrent_registrations_of_one_email_one_wins(client) -> None:
    async def attempt(conductor) -> int:
        r = await conductor.simulate_post("/v1/accounts", json={"email": "race@example.com", "password": PASSWORD})
        return r.status_code

    results = run_concurrently(client.app, [attempt] * 6)
    assert sorted(results) == [201] + [409] * 5


def test_wrong_password_and_unknown_email_look_the_same(client) -> None:
    register(client, "known@example.com")
    wrong = client.simulate_post("/v1/sessions", json={"email": "known@example.com", "password": "x" * 12})
    unknown = client.simulate_post("/v1/sessions", json={"email": "nobody@example.com", "password": "x" * 12})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json["code"] == unknown.json["code"] == "invalid_credentials"
    assert wrong.json["detail"] == unknown.json["detail"]


def test_validation_error_never_echoes_the_password(client) -> None:
    r = client.simulate_post("/v1/accounts", json={"email": "a@b.co", "password": "hunter2"})
    assert r.status_code == 422 and r.json["param"] == "password"
    assert "hunter2" not in r.text


def test_secrets_never_stored_in_clear(client, runtime) -> None:
    account = register(client, "secret@example.com")
    token = login(client, account["email"])
    key = client.simulate_post("/v1/api-keys", json={"name": "k"}, headers=auth(token)).json["secret"]
    totp = client.simulate_post("/v1/me/totp", headers=auth(token)).json["secret"]
    raw = b"".join(n.state for n in runtime.market.recorder.select_notifications(start=None, limit=1000))
    for secret in (PASSWORD, key, key.split("_", 2)[2], totp):
        assert secret.encode() not in raw


def test_api_keys_create_list_revoke(client) -> None:
    account = register(client)
    token = login(client, account["email"])
    created = client.simulate_post("/v1/api-keys", json={"name": "ci", "scopes": ["buyer"]}, headers=auth(token))
    assert created.status_code == 201
    key = created.json["secret"]
    me = client.simulate_get("/v1/me", headers=auth(key))
    assert me.status_code == 200 and me.json["credential"] == "api_key"
    listed = client.simulate_get("/v1/api-keys", headers=auth(token)).json["items"]
    assert [k["id"] for k in listed] == [created.json["id"]]
    assert "secret" not in listed[0] and "secret_ciphertext" not in json.dumps(listed)
    assert client.simulate_delete(f"/v1/api-keys/{created.json['id']}", headers=auth(token)).status_code == 204
    revoked = client.simulate_get("/v1/me", headers=auth(key))
    assert revoked.status_code == 401 and revoked.json["code"] == "invalid_credentials"


def test_tampered_api_key_refused(client) -> None:
    account = register(client)
    token = login(client, account["email"])
    key = client.simulate_post("/v1/api-keys", json={"name": "k"}, headers=auth(token)).json["secret"]
    forged = key[:-2] + ("AA" if not key.endswith("AA") else "BB")
    assert client.simulate_get("/v1/me", headers=auth(forged)).status_code == 401
    assert client.simulate_get("/v1/me", headers=auth("aim_nonsense")).json["code"] == "invalid_credentials"


def test_totp_two_factor_flow(client) -> None:
    account = register(client, "2fa@example.com")
    with freeze_time("2026-03-01T10:00:00Z") as frozen:
        token = login(client, account["email"])
        secret = client.simulate_post("/v1/me/totp", headers=auth(token)).json["secret"]
        totp = pyotp.TOTP(secret)
        bad = client.simulate_post("/v1/me/totp/confirm", json={"code": "000000"}, headers=auth(token))
        assert bad.status_code == 401 and bad.json["code"] == "totp_required"
        ok = client.simulate_post("/v1/me/totp/confirm", json={"code": totp.now()}, headers=auth(token))
        assert ok.status_code == 200 and ok.json["totp_enabled"] is True
        no_code = client.simulate_post("/v1/sessions", json={"email": account["email"], "password": PASSWORD})
        assert no_code.status_code == 401 and no_code.json["code"] == "totp_required"
        frozen.tick(30)
        code = totp.now()
        assert login(client, account["email"], totp_code=code)
        replay = client.simulate_post("/v1/sessions", json={"email": account["email"], "password": PASSWORD,
                                                            "totp_code": code})
        assert replay.status_code == 401 and replay.json["code"] == "token_replayed"  # a code works once


def test_session_key_rotation_honours_old_key_for_24_hours(client, runtime) -> None:
    account = register(client)
    with freeze_time("2026-01-01T00:00:00Z") as frozen:
        token = login(client, account["email"])
        runtime.market.rotate_platform_key({"actor": "op", "correlation_id": "t", "causation_id": ""}, "session")
        new_token = login(client, account["email"])
        frozen.move_to("2026-01-01T23:59:00Z")
        # the session TTL is one hour, so re-check the *key* acceptance with a long-lived token
        assert runtime.market.keyring().accepted("session", runtime.market.now_s()) == ["session-2", "session-1"]
        frozen.move_to("2026-01-02T00:01:00Z")
        assert runtime.market.keyring().accepted("session", runtime.market.now_s()) == ["session-2"]
    assert token != new_token


def test_old_session_key_tokens_refused_after_grace(client, runtime, make_settings, store) -> None:
    account = register(client)
    with freeze_time("2026-01-01T00:00:00Z") as frozen:
        runtime.market.identity.session_ttl_s = 3 * 86400  # long-lived token to isolate the key check
        token = login(client, account["email"])
        runtime.market.rotate_platform_key({"actor": "op", "correlation_id": "t", "causation_id": ""}, "session")
        frozen.move_to("2026-01-01T23:59:00Z")
        assert client.simulate_get("/v1/me", headers=auth(token)).status_code == 200
        frozen.move_to("2026-01-02T00:01:00Z")
        r = client.simulate_get("/v1/me", headers=auth(token))
        assert r.status_code == 401 and r.json["code"] == "key_expired"


def test_oauth_client_credentials_grant(client) -> None:
    account = register(client, roles=["buyer"])
    token = login(client, account["email"])
    created = client.simulate_post("/v1/oauth/clients", json={"name": "agent"}, headers=auth(token)).json
    client_id, secret = created["id"], created["secret"]
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    r = client.simulate_post("/v1/oauth/token", body="grant_type=client_credentials",
                             headers={"Authorization": f"Basic {basic}",
                                      "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.json
    access = r.json["access_token"]
    me = client.simulate_get("/v1/me", headers=auth(access))
    assert me.status_code == 200 and me.json["credential"] == "oauth_client"
    form = client.simulate_post("/v1/oauth/token", body=f"grant_type=client_credentials&client_id={client_id}"
                                f"&client_secret={secret}",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 200
    wrong = client.simulate_post("/v1/oauth/token", body=f"grant_type=client_credentials&client_id={client_id}"
                                 "&client_secret=nope", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert wrong.status_code == 401
    bad_grant = client.simulate_post("/v1/oauth/token", body="grant_type=password",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert bad_grant.status_code == 422 and bad_grant.json["param"] == "grant_type"
    client.simulate_delete(f"/v1/oauth/clients/{client_id}", headers=auth(token))
    assert client.simulate_get("/v1/me", headers=auth(access)).status_code == 401


def test_roles_gate_the_audit_log(client, runtime) -> None:
    account = register(client, roles=["buyer"])
    token = login(client, account["email"])
    assert client.simulate_get("/v1/audit/events", headers=auth(token)).json["code"] == "forbidden"
    runtime.market.identity.grant_role({"actor": "op", "correlation_id": "t", "causation_id": ""}, account["email"],
                              "auditor")
    for runner in runtime.runners():
        runner.setup()
        runner.catch_up()
    token = login(client, account["email"])
    r = client.simulate_get("/v1/audit/events", headers=auth(token))
    assert r.status_code == 200
    types = [e["event_type"] for e in r.json["items"]]
    assert "Account.Registered" in types and "Account.RoleGranted" in types
    assert all(e["actor"] and e["correlation_id"] for e in r.json["items"])
