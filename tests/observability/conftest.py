"""The purchase fixtures (a hub with the card rail on the loopback Stripe stub, ``Shop``)."""

from tests.purchases.conftest import shop, shop_runtime  # noqa: F401  (fixtures)
