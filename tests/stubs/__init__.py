"""The loopback stubs (``ops/stubs``) as the tests use them, and their pytest fixtures."""

from collections.abc import Iterator

import pytest

from ops.stubs import (
    DEFAULT_API_KEY,
    DEFAULT_WEBHOOK_SECRET,
    StripeStub,
    StubRequest,
    payment_intent_succeeded_event,
    sign_webhook,
    webhook_event,
)


@pytest.fixture(name="stripe_stub")
def stripe_stub_fixture() -> Iterator[StripeStub]:
    """Fixture ``stripe_stub``: a started :class:`StripeStub` (:data:`DEFAULT_API_KEY`).

    Register it with ``from tests.stubs import stripe_stub_fixture  # noqa: F401`` in a
    ``conftest.py`` or test module; the stub stops after the test.
    """
    with StripeStub() as stub:
        yield stub


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
