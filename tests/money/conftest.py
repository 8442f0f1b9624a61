"""Money fixtures: a runtime on each store with the card rail pointed at the loopback Stripe stub."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from falcon import testing

from api.app import create_app
from ops.bootstrap import build_runtime
from tests.helpers import auth, login, register
from tests.stubs import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET, payment_intent_succeeded_event, sign_webhook


@pytest.fixture
def money_runtime(make_settings, store, stripe_stub):
    rt = build_runtime(make_settings(store, stripe_api_key=DEFAULT_API_KEY, stripe_webhook_secret=DEFAULT_WEBHOOK_SECRET,
                                     stripe_api_base=stripe_stub.url))
    yield rt
    rt.close()


@pytest.fixture
def money_client(money_runtime) -> testing.TestClient:
    return testing.TestClient(create_app(runtime=money_runtime))


def person(client: Any, roles: list[str]) -> dict[str, Any]:
    account = register(client, roles=roles)
    return {**account, "headers": auth(login(client, account["email"]))}


def deliver_webhook(client: Any, body: bytes, secret: str = DEFAULT_WEBHOOK_SECRET) -> Any:
    return client.simulate_post("/v1/webhooks/stripe", body=body,
                                headers={"Stripe-Signature": sign_webhook(body, secret),
                                         "Content-Type": "application/json"})


def open_card_channel(client: Any, stub: Any, buyer: dict[str, Any], amount_minor: int,
                      currency: str = "USD") -> tuple[str, bytes]:
    """Open a card channel and fund it through a signed webhook; returns (id, webhook body)."""
    r = client.simulate_post("/v1/channels", json={"rail": "card", "currency": currency, "amount_minor": amount_minor},
                             headers={**buyer["headers"], "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 201, r.json
    intent = stub.succeed_payment_intent(r.json["payment"]["payment_intent_id"])
    body = payment_intent_succeeded_event(intent)
    w = deliver_webhook(client, body)
    assert w.status_code == 200 and w.json["credited"] is True, w.json
    return r.json["id"], body


def debit(client: Any, buyer: dict[str, Any], channel_id: str, seller_id: str, amount_minor: int,
          key: str | None = None) -> Any:
    """POST a debit (sync client: the response; ASGI conductor: an awaitable of it)."""
    return client.simulate_post(f"/v1/channels/{channel_id}/debits",
                                json={"amount_minor": amount_minor, "seller_account_id": seller_id},
                                headers={**buyer["headers"], "Idempotency-Key": key or uuid.uuid4().hex})


def catch_up(runtime: Any) -> None:
    for runner in runtime.runners():
        runner.catch_up()
