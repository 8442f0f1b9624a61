"""Loopback stand-ins for outside services, for tests and local end-to-end runs."""

from tests.stubs.stripe_stub import (
    DEFAULT_API_KEY,
    DEFAULT_WEBHOOK_SECRET,
    StripeStub,
    StubRequest,
    payment_intent_succeeded_event,
    sign_webhook,
    stripe_stub_fixture,
    webhook_event,
)

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_WEBHOOK_SECRET",
    "StripeStub",
    "StubRequest",
    "payment_intent_succeeded_event",
    "sign_webhook",
    "stripe_stub_fixture",
    "webhook_event",
]
