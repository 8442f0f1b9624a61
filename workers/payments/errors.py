"""Errors of the payment provider boundary, in the one hierarchy of :mod:`domain.errors`.

``retryable`` tells a worker what to do: retry with the *same* idempotency key
(:class:`PaymentProviderUnavailable`), or give up and record the failure (every
:class:`PaymentProviderRejected`), as Dramatiq's ``Retry`` / ``throws=`` would.
"""

from __future__ import annotations

from domain.errors import InvalidInput, Unavailable


class PaymentProviderUnavailable(Unavailable):
    """Raised when Stripe cannot be reached, times out, rate-limits, or answers 409 or 5xx.

    Transient: retry later with the same idempotency key, which makes the retry safe.
    """

    code = "payment_provider_unavailable"
    title = "Payment provider unavailable"
    retryable = True


class PaymentProviderRejected(InvalidInput):
    """Raised when Stripe refuses a request with a 4xx answer; the same request cannot succeed."""

    code = "payment_provider_rejected"
    title = "Payment provider rejected the request"
    retryable = False


class PaymentIdempotencyConflict(PaymentProviderRejected):
    """Raised when an idempotency key was already used at Stripe with other parameters."""

    code = "payment_idempotency_conflict"
    status = 409
    title = "Idempotency key already used with other parameters"


class PaymentProviderMisconfigured(PaymentProviderRejected):
    """Raised when Stripe refuses our credentials (401/403): our deployment's fault."""

    code = "payment_provider_misconfigured"
    status = 500
    title = "Payment provider misconfigured"
