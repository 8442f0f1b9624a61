"""Device enrollment, device tokens and key rotation, on both stores."""

from __future__ import annotations

from freezegun import freeze_time

from domain.model.device import enrollment_message
from domain.model.keys import KxPrivateKey, SigningKey, b64url
from tests.helpers import auth, device_jwt, enroll, register, rotation_body, seller_with_key

NOW_S = 1_767_225_600  # 2026-01-01T00:00:00Z


def test_enroll_then_device_authenticated_request(client) -> None:
    seller = seller_with_key(client)
    device = enroll(client, seller)
    with freeze_time("2026-01-01T00:00:00Z"):
        token = device_jwt(device["key"], device["id"], NOW_S)
        r = client.simulate_get("/v1/devices/me", headers=auth(token))
    assert r.status_code == 200, r.json
    assert r.json["id"] == device["id"] and r.json["account_id"] == seller["id"]
    listed = client.simulate_get("/v1/devices", headers=auth(seller["api_key"]))
    assert listed.status_code == 200


def test_replayed_device_token_refused(client) -> None:
    seller = seller_with_key(client)
    device = enroll(client, seller)
    with freeze_time("2026-01-01T00:00:00Z"):
        token = device_jwt(device["key"], device["id"], NOW_S)
        assert client.simulate_get("/v1/devices/me", headers=auth(token)).status_code == 200
        again = client.simulate_get("/v1/devices/me", headers=auth(token))
    assert again.status_code == 401 and again.json["code"] == "token_replayed"


def test_expired_long_lived_and_foreign_audience_tokens_refused(client) -> None:
    seller = seller_with_key(client)
    device = enroll(client, seller)
    with freeze_time("2026-01-01T00:10:00Z"):
        stale = client.simulate_get("/v1/devices/me", headers=auth(device_jwt(device["key"], device["id"], NOW_S)))
        long = client.simulate_get("/v1/devices/me", headers=auth(
            device_jwt(device["key"], device["id"], NOW_S + 600, ttl_s=3600)))
        other = client.simulate_get("/v1/devices/me", headers=auth(
            device_jwt(device["key"], device["id"], NOW_S + 600, audience="http://evil.test")))
    for r in (stale, long, other):
        assert r.status_code == 401 and r.json["code"] == "token_invalid"


def test_unenrolled_key_refused(client) -> None:
    seller = seller_with_key(client)
    device = enroll(client, seller)
    stranger = SigningKey.generate()
    with freeze_time("2026-01-01T00:00:00Z"):
        r = client.simulate_get("/v1/devices/me", headers=auth(device_jwt(stranger, device["id"], NOW_S)))
    assert r.status_code == 403 and r.json["code"] == "device_not_enrolled"


def test_enrollment_needs_proof_of_possession(client) -> None:
    seller = seller_with_key(client)
    key, kx, impostor = SigningKey.generate(), KxPrivateKey.generate(), SigningKey.generate()
    challenge = client.simulate_post("/v1/devices/challenges", json={}, headers=auth(seller["api_key"])).json
    fields = {"challenge": challenge["challenge"], "name": "n", "endpoint": "http://127.0.0.1:9090",
              "public_key": key.verify_key.to_multibase(), "kx_public_key": kx.public_key.to_multibase()}
    forged = b64url(impostor.sign(enrollment_message(account_id=seller["id"], **fields)))
    r = client.simulate_post("/v1/devices", json={**fields, "signature": forged}, headers=auth(seller["api_key"]))
    assert r.status_code == 401 and r.json["code"] == "signature_invalid"
    good = b64url(key.sign(enrollment_message(account_id=seller["id"], **fields)))
    ok = client.simulate_post("/v1/devices", json={**fields, "signature": good}, headers=auth(seller["api_key"]))
    assert ok.status_code == 201  # a failed attempt does not burn the challenge
    other = b64url(SigningKey.generate().sign(b"x"))
    replay = client.simulate_post("/v1/devices", json={**fields, "signature": other}, headers=auth(seller["api_key"]))
    assert replay.status_code == 401


def test_challenge_of_another_account_and_buyers_refused(client) -> None:
    alice, bob = seller_with_key(client), seller_with_key(client)
    key, kx = SigningKey.generate(), KxPrivateKey.generate()
    challenge = client.simulate_post("/v1/devices/challenges", json={}, headers=auth(alice["api_key"])).json
    fields = {"challenge": challenge["challenge"], "name": "n", "endpoint": "http://127.0.0.1:9090",
              "public_key": key.verify_key.to_multibase(), "kx_public_key": kx.public_key.to_multibase()}
    sig = b64url(key.sign(enrollment_message(account_id=bob["id"], **fields)))
    r = client.simulate_post("/v1/devices", json={**fields, "signature": sig}, headers=auth(bob["api_key"]))
    assert r.status_code == 401 and r.json["code"] == "token_invalid"
    buyer = register(client, roles=["buyer"])
    token = client.simulate_post("/v1/sessions", json={"email": buyer["email"], "password": buyer["password"]})
    r = client.simulate_post("/v1/devices/challenges", json={}, headers=auth(token.json["access_token"]))
    assert r.status_code == 403 and r.json["code"] == "forbidden"


def test_same_key_cannot_enroll_twice(client) -> None:
    seller = seller_with_key(client)
    key = SigningKey.generate()
    enroll(client, seller, key)
    challenge = client.simulate_post("/v1/devices/challenges", json={}, headers=auth(seller["api_key"])).json
    kx = KxPrivateKey.generate()
    fields = {"challenge": challenge["challenge"], "name": "n", "endpoint": "http://127.0.0.1:9090",
              "public_key": key.verify_key.to_multibase(), "kx_public_key": kx.public_key.to_multibase()}
    sig = b64url(key.sign(enrollment_message(account_id=seller["id"], **fields)))
    r = client.simulate_post("/v1/devices", json={**fields, "signature": sig}, headers=auth(seller["api_key"]))
    assert r.status_code == 409 and r.json["code"] == "already_exists"


def test_rotation_old_key_accepted_23h59_refused_24h01(client) -> None:
    seller = seller_with_key(client)
    device = enroll(client, seller)
    old, new = device["key"], SigningKey.generate()
    with freeze_time("2026-01-01T00:00:00Z") as frozen:
        body = rotation_body(old, new, device["id"], device["kx"])
        r = client.simulate_post(f"/v1/devices/{device['id']}/keys", json=body,
                                 headers=auth(device_jwt(old, device["id"], NOW_S)))
        assert r.status_code == 201, r.json
        assert r.json["kid"] == new.key_id
        frozen.move_to("2026-01-01T23:59:00Z")
        t = NOW_S + 23 * 3600 + 59 * 60
        assert client.simulate_get("/v1/devices/me", headers=auth(device_jwt(old, device["id"], t))).status_code == 200
        assert client.simulate_get("/v1/devices/me", headers=auth(device_jwt(new, device["id"], t))).status_code == 200
        frozen.move_to("2026-01-02T00:01:00Z")
        t = NOW_S + 24 * 3600 + 60
        late = client.simulate_get("/v1/devices/me", headers=auth(device_jwt(old, device["id"], t)))
        assert late.status_code == 401 and late.json["code"] == "key_expired"
        assert client.simulate_get("/v1/devices/me", headers=auth(device_jwt(new, device["id"], t))).status_code == 200


def test_rotation_must_be_signed_by_the_current_key(client) -> None:
    seller = seller_with_key(client)
    device = enroll(client, seller)
    new, impostor = SigningKey.generate(), SigningKey.generate()
    with freeze_time("2026-01-01T00:00:00Z"):
        body = rotation_body(impostor, new, device["id"], device["kx"])
        r = client.simulate_post(f"/v1/devices/{device['id']}/keys", json=body,
                                 headers=auth(device_jwt(device["key"], device["id"], NOW_S)))
    assert r.status_code == 401 and r.json["code"] == "signature_invalid"


def test_malformed_device_inputs_are_clear_errors(client) -> None:
    seller = seller_with_key(client)
    r = client.simulate_post("/v1/devices", json={"challenge": "x" * 20, "name": "n", "endpoint": "ftp://x",
                                                  "public_key": "z" + "1" * 40, "kx_public_key": "z" + "1" * 40,
                                                  "signature": "A" * 86}, headers=auth(seller["api_key"]))
    assert r.status_code in (400, 401, 422) and r.headers["content-type"] == "application/problem+json"
    r = client.simulate_get("/v1/devices/not-a-uuid", headers=auth(seller["api_key"]))
    assert r.status_code == 422 and r.json["code"] == "invalid_input"
