"""Purchase fixtures: a hub on each store with the card rail on the loopback Stripe stub, a
seller with an enrolled device and a deliverable listing, a buyer with a funded channel."""

from __future__ import annotations

from typing import Any

import pytest
from falcon import testing

from api.app import create_app
from ops.bootstrap import build_runtime
from tests.purchases.shop import Shop
from tests.stubs import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET


def shop_settings(make_settings: Any, store: str, stripe_stub: Any, **extra: Any) -> Any:
    return make_settings(store, stripe_api_key=DEFAULT_API_KEY, stripe_webhook_secret=DEFAULT_WEBHOOK_SECRET,
                         stripe_api_base=stripe_stub.url, **extra)


@pytest.fixture
def shop_runtime(make_settings, store, stripe_stub):
    rt = build_runtime(shop_settings(make_settings, store, stripe_stub))
    yield rt
    rt.close()


@pytest.fixture
def shop(shop_runtime, stripe_stub) -> Shop:
    return Shop(shop_runtime, testing.TestClient(create_app(runtime=shop_runtime)), stripe_stub)
