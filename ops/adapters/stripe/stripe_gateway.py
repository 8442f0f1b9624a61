"""Stripe behind one small class that speaks our primitives and our errors.

Built on ``stripe.StripeClient`` (stripe-python 16): every call goes through the real library
(form encoding, ``Idempotency-Key``, retries with backoff, error classes), pointed at
``api_base`` when one is given (a loopback stub in tests). Nothing here returns a
``StripeObject`` (not a dict in v16): callers get plain dicts of primitives.

Money: our amounts are ints of minor units with upper-case ISO 4217 codes (``"USD"``);
Stripe takes the same int with a lower-case code.

Idempotency: every POST carries a key derived from our aggregate (the channel's top-up key,
the payout id, the channel's refund key per intent), so a retry after a timeout, a crash or a 5xx can never pay twice.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import stripe

from domain.model.errors import (
    InvalidInput,
    PaymentIdempotencyConflict,
    PaymentProviderMisconfigured,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    SignatureInvalid,
)

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # Stripe: at most 255 characters


class StripeGateway:
    """Creates payment intents, refunds and transfers at Stripe and verifies Stripe webhooks.

    Args:
        api_key: The secret key (``sk_…`` or a restricted ``rk_…``).
        webhook_secret: The endpoint's signing secret (``whsec_…``).
        api_base: Base URL of the API; default Stripe's own. Tests pass a loopback stub.
        max_network_retries: Retries stripe-python makes on connection errors, 409 and 5xx,
            with backoff and the same idempotency key.
        timeout_s: Per-request timeout of the HTTP client.
        http_client: A ``stripe.HTTPClient`` to use instead of the default requests one.
    """

    def __init__(
        self,
        api_key: str,
        webhook_secret: str,
        api_base: str | None = None,
        *,
        max_network_retries: int = 2,
        timeout_s: float = 30.0,
        http_client: stripe.HTTPClient | None = None,
    ) -> None:
        if not api_key or not api_key.strip():
            raise InvalidInput("a Stripe API key is required", param="api_key")
        if not webhook_secret or not webhook_secret.strip():
            raise InvalidInput("a Stripe webhook secret is required", param="webhook_secret")
        if max_network_retries < 0:
            raise InvalidInput("max_network_retries must be >= 0", param="max_network_retries")
        self._webhook_secret = webhook_secret
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            max_network_retries=max_network_retries,
            http_client=http_client or stripe.RequestsClient(timeout=timeout_s),
        )

    # -- payments in -----------------------------------------------------------------------

    def create_payment_intent(
        self, *, amount_minor: int, currency: str, channel_id: str, idempotency_key: str
    ) -> dict[str, Any]:
        """Create a PaymentIntent that funds ``channel_id``.

        Args:
            amount_minor: Positive amount in minor units of ``currency``.
            currency: Upper-case ISO 4217 code, e.g. ``"USD"``.
            channel_id: Our channel; stored in the intent's ``metadata`` so the webhook can
                credit the right channel.
            idempotency_key: Sent as ``Idempotency-Key``; the same key with the same
                arguments returns the same intent.

        Returns:
            ``{"id", "client_secret", "status"}``.

        Raises:
            InvalidInput: for a bad argument (before any call).
            PaymentProviderUnavailable: transient; retry with the same key.
            PaymentProviderRejected: permanent (incl. :class:`PaymentIdempotencyConflict`).
        """
        _check_amount(amount_minor)
        _check_currency(currency)
        _check_id(channel_id, "channel_id")
        _check_idempotency_key(idempotency_key, "idempotency_key")
        params = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "metadata": {"channel_id": channel_id},
        }
        intent = self._create(self._client.v1.payment_intents, params, idempotency_key)
        return {"id": intent.id, "client_secret": intent.client_secret, "status": intent.status}

    def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        """Read a PaymentIntent back (for reconciliation).

        Returns:
            ``{"id", "status", "amount_minor", "currency", "channel_id"}`` with an upper-case
            currency and ``channel_id`` from the metadata (``None`` if absent).
        """
        _check_id(payment_intent_id, "payment_intent_id")
        try:
            intent = self._client.v1.payment_intents.retrieve(payment_intent_id)
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        plain = intent.to_dict()
        return {
            "id": plain["id"],
            "status": plain.get("status"),
            "amount_minor": plain.get("amount"),
            "currency": str(plain.get("currency", "")).upper(),
            "channel_id": (plain.get("metadata") or {}).get("channel_id"),
        }

    # -- webhooks --------------------------------------------------------------------------

    def verify_webhook(self, payload: bytes, sig_header: str | None, *, tolerance_s: int = 300) -> dict[str, Any]:
        """Verify a webhook's ``Stripe-Signature`` and return the event as plain data.

        Args:
            payload: The raw request body, exactly as received.
            sig_header: The ``Stripe-Signature`` header value.
            tolerance_s: How far the signed timestamp may lie from now, either way.

        Returns:
            ``{"id", "type", "created", "data"}`` where ``data`` is the event's
            ``data.object`` (e.g. the PaymentIntent) as a plain dict.

        Raises:
            SignatureInvalid: missing, malformed, forged or stale signature.
            InvalidInput: a correctly signed payload that is not a Stripe event in JSON.
        """
        if tolerance_s <= 0:
            raise InvalidInput("tolerance_s must be positive", param="tolerance_s")
        try:
            event = self._client.construct_event(payload, sig_header, self._webhook_secret, tolerance=tolerance_s)
        except stripe.SignatureVerificationError as exc:
            raise SignatureInvalid(f"Stripe webhook signature rejected: {exc}") from exc
        except (ValueError, TypeError, AttributeError) as exc:  # incl. JSON and UTF-8 errors
            raise InvalidInput("webhook payload is not a Stripe event", param="payload") from exc
        # stripe-python only rejects old timestamps; a far-future one is as suspicious.
        if _signed_timestamp(sig_header) > time.time() + tolerance_s:
            raise SignatureInvalid("Stripe webhook timestamp is in the future")
        plain = event.to_dict()
        data = plain.get("data")
        if (
            not isinstance(plain.get("id"), str)
            or not isinstance(plain.get("type"), str)
            or not isinstance(data, Mapping)
            or not isinstance(data.get("object"), Mapping)
        ):
            raise InvalidInput("webhook event lacks id, type or data.object", param="payload")
        return {
            "id": plain["id"],
            "type": plain["type"],
            "created": plain.get("created"),
            "data": dict(data["object"]),
        }

    # -- payouts ---------------------------------------------------------------------------

    def create_transfer(self, *, amount_minor: int, currency: str, destination: str, payout_id: str) -> dict[str, Any]:
        """Transfer funds to a connected account, once per payout.

        Args:
            amount_minor: Positive amount in minor units.
            currency: Upper-case ISO 4217 code.
            destination: The seller's connected account (``acct_…``).
            payout_id: Our payout aggregate id; the ``Idempotency-Key`` and ``metadata``.

        Returns:
            ``{"id", "amount_minor", "currency", "destination"}`` (upper-case currency).

        Raises:
            InvalidInput: for a bad argument (before any call).
            PaymentProviderUnavailable: transient; retry with the same payout id.
            PaymentProviderRejected: permanent (incl. :class:`PaymentIdempotencyConflict`).
        """
        _check_amount(amount_minor)
        _check_currency(currency)
        _check_id(destination, "destination")
        if not destination.startswith("acct_"):
            raise InvalidInput("destination must be a connected account id", param="destination")
        _check_idempotency_key(payout_id, "payout_id")
        params = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "destination": destination,
            "metadata": {"payout_id": payout_id},
        }
        transfer = self._create(self._client.v1.transfers, params, payout_id)
        return {
            "id": transfer.id,
            "amount_minor": transfer.amount,
            "currency": str(transfer.currency).upper(),
            "destination": transfer.destination,
        }

    # -- refunds ---------------------------------------------------------------------------

    def create_refund(self, *, payment_intent_id: str, amount_minor: int, refund_key: str) -> dict[str, Any]:
        """Give ``amount_minor`` of a succeeded PaymentIntent back to the card that paid it.

        Args:
            payment_intent_id: The intent (``pi_…``) that funded the channel.
            amount_minor: Positive amount in the intent's currency, at most what it has left
                to refund (Stripe checks).
            refund_key: Our refund's key (channel + intent); the ``Idempotency-Key`` and
                ``metadata``, so a retry returns the same refund instead of a second one.

        Returns:
            ``{"id", "amount_minor", "currency", "payment_intent", "status"}`` (upper-case currency).

        Raises:
            InvalidInput: for a bad argument (before any call).
            PaymentProviderUnavailable: transient; retry with the same refund key.
            PaymentProviderRejected: permanent (incl. :class:`PaymentIdempotencyConflict`).
        """
        _check_id(payment_intent_id, "payment_intent_id")
        if not payment_intent_id.startswith("pi_"):
            raise InvalidInput("payment_intent_id must be a PaymentIntent id", param="payment_intent_id")
        _check_amount(amount_minor)
        _check_idempotency_key(refund_key, "refund_key")
        params = {
            "payment_intent": payment_intent_id,
            "amount": amount_minor,
            "metadata": {"refund_key": refund_key},
        }
        refund = self._create(self._client.v1.refunds, params, refund_key)
        return {
            "id": refund.id,
            "amount_minor": refund.amount,
            "currency": str(refund.currency).upper(),
            "payment_intent": refund.payment_intent,
            "status": refund.status,
        }


    @staticmethod
    def _create(service: Any, params: dict[str, Any], idempotency_key: str) -> Any:
        """One idempotent POST through the library, its errors translated to ours."""
        try:
            return service.create(params=params, options={"idempotency_key": idempotency_key})
        except stripe.StripeError as exc:
            raise _translate(exc) from exc


def _translate(exc: stripe.StripeError) -> Exception:
    """Map a stripe-python error to ours: transient → Unavailable, 4xx → permanent."""
    status = exc.http_status
    extra = {"stripe_code": exc.code, "http_status": status, "request_id": exc.request_id}
    detail = f"Stripe: {exc.user_message or type(exc).__name__}"
    if isinstance(exc, (stripe.APIConnectionError, stripe.RateLimitError)):
        return PaymentProviderUnavailable(detail, **extra)
    if status is None or status == 409 or status >= 500:
        return PaymentProviderUnavailable(detail, **extra)
    if isinstance(exc, stripe.IdempotencyError):
        return PaymentIdempotencyConflict(detail, **extra)
    if isinstance(exc, (stripe.AuthenticationError, stripe.PermissionError)):
        return PaymentProviderMisconfigured(detail, **extra)
    param = getattr(exc, "param", None)
    return PaymentProviderRejected(detail, param=param, **extra)


def _signed_timestamp(sig_header: str | None) -> int:
    # Only called after stripe-python parsed the same header successfully.
    for item in (sig_header or "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == "t":
            return int(value)
    return 0


def _check_amount(amount_minor: int) -> None:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise InvalidInput("amount_minor must be a positive integer", param="amount_minor")


def _check_currency(currency: str) -> None:
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise InvalidInput("currency must be an upper-case ISO 4217 code", param="currency")


def _check_id(value: str, param: str) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise InvalidInput(f"{param} must be a non-empty string", param=param)


def _check_idempotency_key(value: str, param: str) -> None:
    if not isinstance(value, str) or not _IDEMPOTENCY_KEY.match(value):
        raise InvalidInput(f"{param} must be 1-255 printable ASCII characters", param=param)


__all__ = ["StripeGateway"]
