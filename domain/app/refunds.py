"""Card refund commands: the channel's ``Refunded`` is the intent, Stripe refunds it per
PaymentIntent, and each outcome is recorded on the channel (``CardRefundSent`` /
``CardRefundFailed``). Every Stripe call is keyed by the channel and the intent, so a retry
after a timeout or a crash gets the same refund back, never a second one. A refund Stripe
accepts can still fail days later (the card was closed): its ``refund.failed`` webhook
records ``CardRefundFailed`` on top of ``CardRefundSent`` and the hub holds the money for
the buyer again, for an operator to pay another way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from domain.app.service import Service
from domain.model.channel import FAILED_REFUND_STATUSES
from domain.model.channel_rules import parse_card_refund_key
from domain.model.errors import InvalidInput, InvalidState, NotFound, Unavailable

log = structlog.get_logger("refunds")

if TYPE_CHECKING:
    from uuid import UUID



class RefundService(Service):
    """The refunds service of the marketplace (composed into ``Marketplace.refunds``)."""

    def send_card_refunds(self, meta: dict, channel_id: str | UUID) -> dict[str, str]:
        """Send every planned, unrecorded refund of a settled card channel to Stripe.

        The gateway is a :class:`domain.model.ports.RefundGateway`. Without one (no Stripe key)
        nothing is sent and the refunds stay pending.

        Returns:
            ``{payment_intent_id: "sent" | "failed" | "pending"}`` over the channel's plan.

        Raises:
            Unavailable: transient; parts sent before it are recorded, and the caller
                retries with backoff (same keys, so nothing is refunded twice).
            InvalidState: not a card channel, or a refund that needs an operator.
        """
        channel = self.market.money.channel(channel_id)
        if channel.rail != "card":
            raise InvalidState("only card channels are refunded through Stripe")
        if self.market.money.cards is not None:
            for part in channel.card_refunds_pending():
                intent_id = part["payment_intent_id"]
                try:
                    refund = self.market.money.cards.create_refund(payment_intent_id=intent_id,
                                                         amount_minor=part["amount_minor"],
                                                         refund_key=part["refund_key"])
                except Unavailable:
                    raise  # nothing to record: the retry sends the same key again
                except InvalidInput as exc:
                    self._card_refund_outcome(meta, channel.id, intent_id, failure_reason=repr(exc))
                    continue
                if refund.get("status") in FAILED_REFUND_STATUSES:  # refused at once, not later
                    self._card_refund_outcome(meta, channel.id, intent_id, stripe_refund_id=refund["id"],
                                              failure_reason=f"refund {refund['id']} {refund['status']}")
                    continue
                self._card_refund_outcome(meta, channel.id, intent_id, stripe_refund_id=refund["id"])
            channel = self.market.money.channel(channel_id)
        return {p["payment_intent_id"]: channel.card_refunds.get(p["payment_intent_id"], {}).get("status", "pending")
                for p in channel.card_refund_plan()}

    def record_card_refund_failure(self, meta: dict, refund: dict[str, Any]) -> dict[str, Any]:
        """Record a refund Stripe failed after accepting it, from a *verified* webhook
        (``refund.failed``, or ``charge.refund.updated`` / ``refund.updated`` with a failed
        status). A replay records nothing more; a refund that is not ours is acknowledged
        and ignored (Stripe would otherwise redeliver it for days).

        Returns:
            ``{"recorded": bool, "channel_id": str | None}``.
        """
        refund_id, status, metadata = refund.get("id"), refund.get("status"), refund.get("metadata")
        if not isinstance(refund_id, str) or status not in FAILED_REFUND_STATUSES:
            raise InvalidInput("refund event lacks an id or a failed status", param="data.object")
        owner = parse_card_refund_key(metadata.get("refund_key") if isinstance(metadata, dict) else None)
        if owner is None or owner[1] != refund.get("payment_intent"):
            return {"recorded": False, "channel_id": None}
        channel_id, intent_id = owner
        reason = f"refund {refund_id} {status}: {refund.get('failure_reason') or 'unknown'}"

        def command() -> bool:
            channel = self.market.money.channel(channel_id)
            if not channel.mark_card_refund_failed_later(meta, intent_id, refund_id, reason):
                return False
            channel.check_invariants()
            self.save(channel)
            return True

        try:
            recorded = self.retrying(command)
        except (NotFound, InvalidState) as exc:
            # Our key, but not a refund of this hub's (another environment sharing the Stripe
            # account) or not the one we recorded: acknowledged, or Stripe redelivers for days.
            log.warning("card_refund.failure_ignored", refund_id=refund_id, channel_id=str(channel_id),
                        reason=str(exc))
            return {"recorded": False, "channel_id": None}
        return {"recorded": recorded, "channel_id": str(channel_id)}

    def resolve_card_refund(self, meta: dict, channel_id: str | UUID, payment_intent_id: str,
                            reference: str) -> dict[str, Any]:
        """An operator records how a failed card refund was paid instead (``aimarket admin
        resolve-refund``); repeating it changes nothing. Returns the channel's public view."""

        def command() -> dict[str, Any]:
            channel = self.market.money.channel(channel_id)
            if channel.resolve_card_refund(meta, payment_intent_id, reference):
                channel.check_invariants()
                self.save(channel)
            return channel.to_public()

        return self.retrying(command)

    def _card_refund_outcome(self, meta: dict, channel_id: UUID, intent_id: str, *,
                             stripe_refund_id: str = "", failure_reason: str = "") -> None:
        def command() -> None:
            channel = self.market.money.channel(channel_id)
            if failure_reason:
                changed = channel.mark_card_refund_failed(meta, intent_id, failure_reason, stripe_refund_id)
            else:
                changed = channel.mark_card_refund_sent(meta, intent_id, stripe_refund_id)
            if changed:  # False: another worker recorded this refund first (same Stripe refund)
                channel.check_invariants()
                self.save(channel)

        self.retrying(command)
