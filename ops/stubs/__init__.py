"""Loopback stand-ins for outside services, for tests, benchmarks and local demos.

Production code never imports these; they live under ``ops/`` (not ``tests/``) so benches
and demos can use them without importing the test suite.
"""

from ops.stubs.stripe_stub import (
    DEFAULT_API_KEY,
    DEFAULT_WEBHOOK_SECRET,
    StripeStub,
    StubRequest,
    payment_intent_succeeded_event,
    sign_webhook,
    webhook_event,
)

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_WEBHOOK_SECRET",
    "StripeStub",
    "StubRequest",
    "payment_intent_succeeded_event",
    "sign_webhook",
    "webhook_event",
]
