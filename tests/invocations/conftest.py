"""Invocation fixtures: the purchase tests' shop (card rail on the loopback Stripe stub), on
PostgreSQL, with compute listings and sessions opened over the HTTP API."""

from __future__ import annotations

import pytest
from falcon import testing

from api.app import create_app
from ops.bootstrap import build_runtime
from tests.invocations.session import Market
from tests.purchases.conftest import shop_settings


@pytest.fixture
def store() -> str:
    return "postgres"


@pytest.fixture
def market_runtime(make_settings, store, stripe_stub):
    rt = build_runtime(shop_settings(make_settings, store, stripe_stub))
    yield rt
    rt.close()


@pytest.fixture
def mkt(market_runtime, stripe_stub) -> Market:
    return Market(market_runtime, testing.TestClient(create_app(runtime=market_runtime)), stripe_stub)
