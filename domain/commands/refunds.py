"""Card refund commands: the channel's ``Refunded`` is the intent, Stripe refunds it per
PaymentIntent, and each outcome is recorded on the channel (``CardRefundSent`` /
``CardRefundFailed``). Every Stripe call is keyed by the channel and the intent, so a retry
after a timeout or a crash gets the same refund back, never a second one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from domain.errors import InvalidInput, InvalidState, Unavailable

if TYPE_CHECKING:
    from uuid import UUID

    from domain.application import Marketplace


class CardRefundCommands:
    """Mixed into Marketplace through MoneyCommands; ``self`` is the application."""

    def send_card_refunds(self: Marketplace, meta: dict, channel_id: str | UUID) -> dict[str, str]:
        """Send every planned, unrecorded refund of a settled card channel to Stripe.

        The gateway is a :class:`domain.ports.RefundGateway`. Without one (no Stripe key)
        nothing is sent and the refunds stay pending.

        Returns:
            ``{payment_intent_id: "sent" | "failed" | "pending"}`` over the channel's plan.

        Raises:
            Unavailable: transient; parts sent before it are recorded, and the caller
                retries with backoff (same keys, so nothing is refunded twice).
            InvalidState: not a card channel, or a refund that needs an operator.
        """
        channel = self.channel(channel_id)
        if channel.rail != "card":
            raise InvalidState("only card channels are refunded through Stripe")
        if self.payments is not None:
            for part in channel.card_refunds_pending():
                intent_id = part["payment_intent_id"]
                try:
                    refund = self.payments.create_refund(payment_intent_id=intent_id,
                                                         amount_minor=part["amount_minor"],
                                                         refund_key=part["refund_key"])
                except Unavailable:
                    raise  # nothing to record: the retry sends the same key again
                except InvalidInput as exc:
                    self._card_refund_outcome(meta, channel.id, intent_id, failure_reason=repr(exc))
                    continue
                self._card_refund_outcome(meta, channel.id, intent_id, stripe_refund_id=refund["id"])
            channel = self.channel(channel_id)
        return {p["payment_intent_id"]: channel.card_refunds.get(p["payment_intent_id"], {}).get("status", "pending")
                for p in channel.card_refund_plan()}

    def _card_refund_outcome(self: Marketplace, meta: dict, channel_id: UUID, intent_id: str, *,
                             stripe_refund_id: str = "", failure_reason: str = "") -> None:
        def command() -> None:
            channel = self.channel(channel_id)
            if failure_reason:
                changed = channel.mark_card_refund_failed(meta, intent_id, failure_reason)
            else:
                changed = channel.mark_card_refund_sent(meta, intent_id, stripe_refund_id)
            if changed:  # False: another worker recorded this refund first (same Stripe refund)
                channel.check_invariants()
                self.save(channel)

        self.retrying(command)
