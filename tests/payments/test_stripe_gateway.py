"""StripeGateway through the real stripe-python library against the loopback Stripe stub."""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest
import requests
import stripe

from domain.model.errors import (
    InvalidInput,
    PaymentIdempotencyConflict,
    PaymentProviderMisconfigured,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    SignatureInvalid,
    Unavailable,
)
from ops.adapters.stripe.stripe_gateway import StripeGateway
from ops.stubs.stripe_stub import (
    DEFAULT_API_KEY,
    DEFAULT_WEBHOOK_SECRET,
    StripeStub,
    payment_intent_succeeded_event,
    sign_webhook,
)
from tests.stubs import stripe_stub_fixture  # noqa: F401 - registers the ``stripe_stub`` fixture


@pytest.fixture
def gateway(stripe_stub: StripeStub) -> StripeGateway:
    return StripeGateway(DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET, api_base=stripe_stub.url)


def _intent(gateway: StripeGateway, key: str = "topup-ch_1-1", amount: int = 1500) -> dict:
    return gateway.create_payment_intent(amount_minor=amount, currency="USD", channel_id="ch_1", idempotency_key=key)


# -- payment intents -------------------------------------------------------------------------


def test_create_payment_intent_sends_checked_form_and_key(gateway: StripeGateway, stripe_stub: StripeStub) -> None:
    result = _intent(gateway)
    assert set(result) == {"id", "client_secret", "status"}
    assert type(result) is dict
    assert result["id"].startswith("pi_")
    assert result["client_secret"].startswith(result["id"] + "_secret_")
    assert result["status"] == "requires_payment_method"
    [request] = stripe_stub.requests_to("POST", "/v1/payment_intents")
    assert request.status == 200
    assert request.params == {
        "amount": "1500",
        "currency": "usd",
        "metadata": {"channel_id": "ch_1"},
    }
    assert request.idempotency_key == "topup-ch_1-1"
    assert request.headers["authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert stripe_stub.payment_intents[result["id"]]["metadata"] == {"channel_id": "ch_1"}


def test_repeated_create_with_same_key_returns_same_intent(gateway: StripeGateway, stripe_stub: StripeStub) -> None:
    first = _intent(gateway)
    second = _intent(gateway)
    assert second == first
    assert len(stripe_stub.payment_intents) == 1
    assert [r.replayed for r in stripe_stub.requests_to("POST", "/v1/payment_intents")] == [
        False,
        True,
    ]


def test_same_key_other_params_is_a_permanent_conflict(gateway: StripeGateway) -> None:
    _intent(gateway, amount=1500)
    with pytest.raises(PaymentIdempotencyConflict) as info:
        _intent(gateway, amount=1600)
    assert isinstance(info.value, InvalidInput)
    assert info.value.retryable is False
    assert info.value.code == "payment_idempotency_conflict"


def test_5xx_is_retried_by_the_library_with_the_same_key(gateway: StripeGateway, stripe_stub: StripeStub) -> None:
    stripe_stub.fail_next(1)
    result = _intent(gateway)
    attempts = stripe_stub.requests_to("POST", "/v1/payment_intents")
    assert [r.status for r in attempts] == [500, 200]
    assert {r.idempotency_key for r in attempts} == {"topup-ch_1-1"}
    assert list(stripe_stub.payment_intents) == [result["id"]]


def test_persistent_5xx_becomes_retryable_unavailable(stripe_stub: StripeStub) -> None:
    gateway = StripeGateway(DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET, api_base=stripe_stub.url, max_network_retries=1)
    stripe_stub.fail_next(5)
    with pytest.raises(PaymentProviderUnavailable) as info:
        _intent(gateway)
    assert isinstance(info.value, Unavailable)
    assert info.value.retryable is True
    assert info.value.extra["http_status"] == 500
    assert len(stripe_stub.requests) == 2  # one try + one retry
    # After the outage the same key creates the intent exactly once.
    stripe_stub.clear_failures()
    assert _intent(gateway)["id"] in stripe_stub.payment_intents


def test_unreachable_stripe_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gateway = StripeGateway(
        DEFAULT_API_KEY,
        DEFAULT_WEBHOOK_SECRET,
        api_base=f"http://127.0.0.1:{port}",
        max_network_retries=0,
        timeout_s=2,
    )
    with pytest.raises(PaymentProviderUnavailable):
        _intent(gateway)


def test_wrong_api_key_is_misconfiguration(stripe_stub: StripeStub) -> None:
    gateway = StripeGateway("sk_test_wrong", DEFAULT_WEBHOOK_SECRET, api_base=stripe_stub.url)
    with pytest.raises(PaymentProviderMisconfigured) as info:
        _intent(gateway)
    assert info.value.retryable is False
    assert stripe_stub.requests[0].status == 401


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amount_minor": 0},
        {"amount_minor": -5},
        {"amount_minor": 10.5},
        {"amount_minor": True},
        {"currency": "usd"},
        {"currency": "US"},
        {"channel_id": ""},
        {"idempotency_key": ""},
        {"idempotency_key": "x" * 256},
    ],
)
def test_bad_arguments_never_reach_stripe(gateway: StripeGateway, stripe_stub: StripeStub, kwargs: dict) -> None:
    args = {"amount_minor": 100, "currency": "USD", "channel_id": "ch_1", "idempotency_key": "k"}
    with pytest.raises(InvalidInput):
        gateway.create_payment_intent(**{**args, **kwargs})
    assert stripe_stub.requests == []


def test_retrieve_payment_intent_after_success(gateway: StripeGateway, stripe_stub: StripeStub) -> None:
    created = _intent(gateway)
    stripe_stub.succeed_payment_intent(created["id"])
    assert gateway.retrieve_payment_intent(created["id"]) == {
        "id": created["id"],
        "status": "succeeded",
        "amount_minor": 1500,
        "currency": "USD",
        "channel_id": "ch_1",
    }
    with pytest.raises(PaymentProviderRejected):
        gateway.retrieve_payment_intent("pi_missing")


# -- webhooks --------------------------------------------------------------------------------


def _signed_event(gateway: StripeGateway, stripe_stub: StripeStub) -> tuple[bytes, str]:
    intent = stripe_stub.succeed_payment_intent(_intent(gateway)["id"])
    payload = payment_intent_succeeded_event(intent, event_id="evt_1")
    return payload, sign_webhook(payload, DEFAULT_WEBHOOK_SECRET)


def test_verified_webhook_is_plain_data(gateway: StripeGateway, stripe_stub: StripeStub) -> None:
    payload, header = _signed_event(gateway, stripe_stub)
    event = gateway.verify_webhook(payload, header)
    assert event["id"] == "evt_1"
    assert event["type"] == "payment_intent.succeeded"
    obj = event["data"]
    assert type(obj) is dict and type(obj["metadata"]) is dict
    assert obj["status"] == "succeeded" and obj["amount"] == 1500
    assert obj["metadata"] == {"channel_id": "ch_1"}
    assert json.loads(json.dumps(event)) == event  # nothing library-specific inside


def test_stub_signature_matches_stripes_own(gateway: StripeGateway) -> None:
    payload = b'{"id":"evt_x"}'
    ours = sign_webhook(payload, "whsec_abc", timestamp=1_700_000_000)
    theirs = stripe.WebhookSignature.generate_signature_header(payload.decode(), "whsec_abc", timestamp=1_700_000_000)
    assert ours == theirs


def test_forged_signature_is_rejected(gateway: StripeGateway, stripe_stub: StripeStub) -> None:
    payload, _ = _signed_event(gateway, stripe_stub)
    with pytest.raises(SignatureInvalid):
        gateway.verify_webhook(payload, sign_webhook(payload, "whsec_attacker"))


def test_tampered_payload_is_rejected(gateway: StripeGateway, stripe_stub: StripeStub) -> None:
    payload, header = _signed_event(gateway, stripe_stub)
    tampered = payload.replace(b'"amount":1500', b'"amount":9999')
    assert tampered != payload
    with pytest.raises(SignatureInvalid):
        gateway.verify_webhook(tampered, header)


@pytest.mark.parametrize("age_s", [301, 3600])
def test_stale_timestamp_is_rejected(gateway: StripeGateway, stripe_stub: StripeStub, age_s: int) -> None:
    payload, _ = _signed_event(gateway, stripe_stub)
    header = sign_webhook(payload, DEFAULT_WEBHOOK_SECRET, timestamp=int(time.time()) - age_s)
    with pytest.raises(SignatureInvalid):
        gateway.verify_webhook(payload, header)
    # A wider tolerance accepts the same delivery (a replay within the window is for the
    # consumer's event-id dedup to catch).
    assert gateway.verify_webhook(payload, header, tolerance_s=age_s + 60)["id"] == "evt_1"


def test_future_timestamp_is_rejected(gateway: StripeGateway, stripe_stub: StripeStub) -> None:
    payload, _ = _signed_event(gateway, stripe_stub)
    header = sign_webhook(payload, DEFAULT_WEBHOOK_SECRET, timestamp=int(time.time()) + 3600)
    with pytest.raises(SignatureInvalid):
        gateway.verify_webhook(payload, header)


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,v1=00", "t=1700000000", "v1=deadbeef"])
def test_missing_or_malformed_header_is_rejected(
    gateway: StripeGateway, stripe_stub: StripeStub, header: str | None
) -> None:
    payload, _ = _signed_event(gateway, stripe_stub)
    with pytest.raises(SignatureInvalid):
        gateway.verify_webhook(payload, header)  # type: ignore[arg-type]


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe", b"[]", b'{"object":"event"}'])
def test_signed_but_not_an_event_is_invalid_input(gateway: StripeGateway, payload: bytes) -> None:
    with pytest.raises(InvalidInput) as info:
        gateway.verify_webhook(payload, sign_webhook(payload, DEFAULT_WEBHOOK_SECRET))
    assert not isinstance(info.value, SignatureInvalid)


# -- transfers -------------------------------------------------------------------------------


def _transfer(gateway: StripeGateway, payout_id: str = "po_123", amount: int = 900) -> dict:
    return gateway.create_transfer(amount_minor=amount, currency="EUR", destination="acct_seller1", payout_id=payout_id)


def test_transfer_uses_payout_id_as_idempotency_key(gateway: StripeGateway, stripe_stub: StripeStub) -> None:
    first = _transfer(gateway)
    assert first["id"].startswith("tr_")
    assert first == {
        "id": first["id"],
        "amount_minor": 900,
        "currency": "EUR",
        "destination": "acct_seller1",
    }
    again = _transfer(gateway)
    assert again == first
    assert len(stripe_stub.transfers) == 1
    requests_made = stripe_stub.requests_to("POST", "/v1/transfers")
    assert [r.idempotency_key for r in requests_made] == ["po_123", "po_123"]
    assert requests_made[0].params == {
        "amount": "900",
        "currency": "eur",
        "destination": "acct_seller1",
        "metadata": {"payout_id": "po_123"},
    }
    with pytest.raises(PaymentIdempotencyConflict):
        _transfer(gateway, amount=901)
    assert len(stripe_stub.transfers) == 1


def test_transfer_survives_a_5xx_without_paying_twice(gateway: StripeGateway, stripe_stub: StripeStub) -> None:
    stripe_stub.fail_next(1, status=503)
    result = _transfer(gateway, payout_id="po_retry")
    assert list(stripe_stub.transfers) == [result["id"]]


def test_transfer_to_unknown_account_is_rejected(stripe_stub: StripeStub) -> None:
    stripe_stub.known_accounts = {"acct_other"}
    gateway = StripeGateway(DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET, api_base=stripe_stub.url)
    with pytest.raises(PaymentProviderRejected) as info:
        _transfer(gateway)
    assert info.value.param == "destination"
    with pytest.raises(InvalidInput):
        gateway.create_transfer(amount_minor=1, currency="EUR", destination="bank_1", payout_id="p")


# -- refunds ---------------------------------------------------------------------------------


def _paid_intent(gateway: StripeGateway, stripe_stub: StripeStub, amount: int = 1500) -> str:
    intent_id = _intent(gateway, key=f"pay-{amount}", amount=amount)["id"]
    stripe_stub.succeed_payment_intent(intent_id)
    return intent_id


def test_refund_is_keyed_checked_and_replayed(gateway: StripeGateway, stripe_stub: StripeStub) -> None:
    intent_id = _paid_intent(gateway, stripe_stub)
    first = gateway.create_refund(payment_intent_id=intent_id, amount_minor=600, refund_key="rf_ch1_pi")
    assert first == {"id": first["id"], "amount_minor": 600, "currency": "USD", "payment_intent": intent_id,
                     "status": "succeeded"}
    assert first["id"].startswith("re_")
    assert gateway.create_refund(payment_intent_id=intent_id, amount_minor=600, refund_key="rf_ch1_pi") == first
    made = stripe_stub.requests_to("POST", "/v1/refunds")
    assert [(r.idempotency_key, r.replayed) for r in made] == [("rf_ch1_pi", False), ("rf_ch1_pi", True)]
    assert made[0].params == {"payment_intent": intent_id, "amount": "600", "metadata": {"refund_key": "rf_ch1_pi"}}
    assert list(stripe_stub.refunds) == [first["id"]]
    with pytest.raises(PaymentIdempotencyConflict):
        gateway.create_refund(payment_intent_id=intent_id, amount_minor=601, refund_key="rf_ch1_pi")
    assert len(stripe_stub.refunds) == 1


def test_refund_above_what_is_left_or_of_an_unpaid_intent_is_rejected(
    gateway: StripeGateway, stripe_stub: StripeStub
) -> None:
    intent_id = _paid_intent(gateway, stripe_stub)
    gateway.create_refund(payment_intent_id=intent_id, amount_minor=1000, refund_key="rf_a")
    with pytest.raises(PaymentProviderRejected) as info:
        gateway.create_refund(payment_intent_id=intent_id, amount_minor=501, refund_key="rf_b")
    assert info.value.extra["stripe_code"] == "amount_too_large"
    gateway.create_refund(payment_intent_id=intent_id, amount_minor=500, refund_key="rf_c")
    with pytest.raises(PaymentProviderRejected) as info:
        gateway.create_refund(payment_intent_id=intent_id, amount_minor=1, refund_key="rf_d")
    assert info.value.extra["stripe_code"] == "charge_already_refunded"
    unpaid = _intent(gateway, key="unpaid")["id"]
    for intent in (unpaid, "pi_missing"):
        with pytest.raises(PaymentProviderRejected):
            gateway.create_refund(payment_intent_id=intent, amount_minor=1, refund_key=f"rf_{intent}")
    assert sum(r["amount"] for r in stripe_stub.refunds.values()) == 1500


@pytest.mark.parametrize("kwargs", [{"amount_minor": 0}, {"amount_minor": True}, {"payment_intent_id": "ch_1"},
                                    {"payment_intent_id": ""}, {"refund_key": ""}, {"refund_key": "x" * 256}])
def test_bad_refund_arguments_never_reach_stripe(gateway: StripeGateway, stripe_stub: StripeStub, kwargs: dict) -> None:
    args = {"payment_intent_id": "pi_1", "amount_minor": 100, "refund_key": "rf_1"}
    with pytest.raises(InvalidInput):
        gateway.create_refund(**{**args, **kwargs})
    assert stripe_stub.requests == []


# -- the stub itself checks requests ---------------------------------------------------------


def test_stub_enforces_auth_form_and_params(stripe_stub: StripeStub) -> None:
    url = stripe_stub.url + "/v1/payment_intents"
    good = {"amount": "100", "currency": "usd"}
    bearer = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    assert (
        requests.post(url, data=good, headers={"Authorization": "Bearer sk_bad", "Idempotency-Key": "a"}).status_code
        == 401
    )
    assert requests.post(url, data=good, headers=bearer).status_code == 400  # no key
    basic = base64.b64encode(f"{DEFAULT_API_KEY}:".encode()).decode()
    ok = requests.post(url, data=good, headers={"Authorization": f"Basic {basic}", "Idempotency-Key": "b"})
    assert ok.status_code == 200
    replay = requests.post(url, data=good, headers={**bearer, "Idempotency-Key": "b"})
    assert replay.json()["id"] == ok.json()["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    for bad in (
        {"amount": "0", "currency": "usd"},
        {"amount": "1.5", "currency": "usd"},
        {"amount": "100", "currency": "USD"},
        {"currency": "usd"},
        {**good, "surprise": "1"},
    ):
        response = requests.post(url, data=bad, headers={**bearer, "Idempotency-Key": "c"})
        assert response.status_code == 400, bad
    # Failed validations store nothing: the key is still free.
    assert requests.post(url, data=good, headers={**bearer, "Idempotency-Key": "c"}).ok
    as_json = requests.post(url, json=good, headers={**bearer, "Idempotency-Key": "d"})
    assert as_json.status_code == 400
    missing = requests.get(url + "/pi_nope", headers=bearer)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "resource_missing"
