"""Interfaces the application needs from the outside world (implemented in ``ops``)."""

from __future__ import annotations

from typing import Protocol


class NonceStore(Protocol):
    """Remembers single-use values (JWT ``jti``, message nonces) across all hosts."""

    def use_once(self, key: str, ttl_s: int) -> None:
        """Record ``key`` for ``ttl_s`` seconds; raise TokenReplayed if it was already used."""


class PayoutGateway(Protocol):
    """Pays sellers out by the card rail (implemented by ``workers.payments.stripe_gateway``).

    Raises ``domain.errors.Unavailable`` when a retry with the same ``payout_id`` may
    succeed, and ``domain.errors.InvalidInput`` when the provider refused for good; the
    application depends on these two only, never on a worker's module.
    """

    def create_transfer(self, *, amount_minor: int, currency: str, destination: str,
                        payout_id: str) -> dict[str, str]:
        """Transfer ``amount_minor`` to ``destination`` idempotently (key: ``payout_id``)."""


class RefundGateway(Protocol):
    """Gives card payments back to the buyer (implemented by ``workers.payments.stripe_gateway``).

    Errors as :class:`PayoutGateway`: ``Unavailable`` when a retry with the same
    ``refund_key`` may succeed, ``InvalidInput`` when the provider refused for good.
    """

    def create_refund(self, *, payment_intent_id: str, amount_minor: int, refund_key: str) -> dict[str, str]:
        """Refund ``amount_minor`` of one PaymentIntent idempotently (key: ``refund_key``)."""
