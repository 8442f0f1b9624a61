"""Small steps many tests share: a seller with an API key, an enrolled device."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from falcon import testing
from falcon.util import async_to_sync

from domain.model.device import enrollment_message, rotation_message
from domain.model.keys import KxPrivateKey, SigningKey, b64url
from domain.model.tokens import encode_device_jwt

PASSWORD = "correct horse battery"


def wait_until(predicate: Callable[[], object], timeout_s: float, *, what: str = "the condition",
               poll_s: float = 0.02) -> None:
    """Return as soon as ``predicate()`` is true; fail the test if it is not within ``timeout_s``.

    For conditions that another thread or process brings about: never a fixed sleep that
    hopes the machine was fast enough, and the deadline only bounds a wait that went wrong.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(poll_s)


def run_concurrently(app: Any, tasks: list[Callable[[testing.ASGIConductor], Awaitable[Any]]]) -> list[Any]:
    """Run concurrent clients against the ASGI app (each task gets the conductor), on the
    same event loop as the sync test client, so batches and caches behave as in a server."""

    async def main() -> list[Any]:
        async with testing.ASGIConductor(app) as conductor:
            return list(await asyncio.gather(*(task(conductor) for task in tasks)))

    return async_to_sync(main)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(client: Any, email: str | None = None, roles: list[str] | None = None) -> dict[str, Any]:
    email = email or f"{uuid.uuid4().hex[:10]}@example.com"
    r = client.simulate_post("/v1/accounts", json={"email": email, "password": PASSWORD,
                                                   "roles": roles or ["seller", "buyer"]})
    assert r.status_code == 201, r.json
    return {**r.json, "password": PASSWORD}


def login(client: Any, email: str, **extra: Any) -> str:
    r = client.simulate_post("/v1/sessions", json={"email": email, "password": PASSWORD, **extra})
    assert r.status_code == 201, r.json
    return r.json["access_token"]


def seller_with_key(client: Any) -> dict[str, Any]:
    account = register(client)
    session = login(client, account["email"])
    r = client.simulate_post("/v1/api-keys", json={"name": "node"}, headers=auth(session))
    assert r.status_code == 201, r.json
    return {**account, "session": session, "api_key": r.json["secret"]}


def enroll(client: Any, seller: dict[str, Any], key: SigningKey | None = None) -> dict[str, Any]:
    key = key or SigningKey.generate()
    kx = KxPrivateKey.generate()
    r = client.simulate_post("/v1/devices/challenges", json={}, headers=auth(seller["api_key"]))
    assert r.status_code == 201, r.json
    fields = {"challenge": r.json["challenge"], "name": "node-1", "endpoint": "http://127.0.0.1:9090",
              "public_key": key.verify_key.to_multibase(), "kx_public_key": kx.public_key.to_multibase()}
    signature = b64url(key.sign(enrollment_message(account_id=seller["id"], **fields)))
    r = client.simulate_post("/v1/devices", json={**fields, "signature": signature}, headers=auth(seller["api_key"]))
    assert r.status_code == 201, r.json
    return {**r.json, "key": key, "kx": kx}


def device_jwt(key: SigningKey, device_id: str, now_s: int, audience: str = "http://hub.test",
               jti: str | None = None, ttl_s: int = 120) -> str:
    return encode_device_jwt(key.export_seed(), kid=key.key_id, device_id=device_id, audience=audience,
                             iat_s=now_s, jti=jti or uuid.uuid4().hex, ttl_s=ttl_s)


def rotation_body(old: SigningKey, new: SigningKey, device_id: str, kx: KxPrivateKey) -> dict[str, str]:
    public_key, kx_public = new.verify_key.to_multibase(), kx.public_key.to_multibase()
    sig = old.sign(rotation_message(device_id=device_id, public_key=public_key, kx_public_key=kx_public))
    return {"public_key": public_key, "kx_public_key": kx_public, "signature": b64url(sig)}
