"""Payout (and settlement) commands: intent events first, the outside call second, the
outcome recorded last; every outside call keyed by our aggregate's id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from domain.app.service import Service
from domain.model.errors import InvalidInput, NotFound, Unavailable
from domain.model.ids import NS_PLATFORM, natural_id
from domain.model.money import check_currency
from domain.model.payout import PayoutDestination, SellerPayouts

if TYPE_CHECKING:
    pass

NS_PAYOUT_DESTINATION = natural_id(NS_PLATFORM, "payout-destination")
NS_SELLER_PAYOUTS = natural_id(NS_PLATFORM, "seller-payouts")


class PayoutService(Service):
    """The payouts service of the marketplace (composed into ``Marketplace.payouts``)."""

    def set_payout_destination(self, meta: dict, account_id: str, stripe_account: str) -> dict[str, Any]:
        if not isinstance(stripe_account, str) or not stripe_account.startswith("acct_") or len(stripe_account) > 64:
            raise InvalidInput("stripe_account must be a connected account id (acct_…)", param="stripe_account")
        dest_id = natural_id(NS_PAYOUT_DESTINATION, account_id)

        def command() -> dict[str, Any]:
            if self.exists(dest_id):
                dest = self.load(PayoutDestination, dest_id)
                dest.change(meta, stripe_account)
            else:
                dest = PayoutDestination(id=dest_id, meta=meta, account_id=account_id, stripe_account=stripe_account)
            self.save(dest)
            return {"account_id": account_id, "stripe_account": dest.stripe_account}

        return self.retrying(command)

    def payout_destination(self, account_id: str) -> str | None:
        try:
            return self.load(PayoutDestination, natural_id(NS_PAYOUT_DESTINATION, account_id)).stripe_account
        except NotFound:
            return None

    def seller_payouts(self, seller_account_id: str, currency: str) -> SellerPayouts | None:
        try:
            return self.load(SellerPayouts, natural_id(NS_SELLER_PAYOUTS, f"{seller_account_id}:{currency}"))
        except NotFound:
            return None

    def request_payout(self, meta: dict, seller_account_id: str, currency: str, *,
                       earned_minor: int) -> str | None:
        """Record the intent to pay out what ``earned_minor`` (card-rail ledger) leaves owed."""
        check_currency(currency)
        destination = self.payout_destination(seller_account_id)
        if destination is None:
            return None  # nowhere to pay yet: the balance stays payable
        agg_id = natural_id(NS_SELLER_PAYOUTS, f"{seller_account_id}:{currency}")

        def command() -> str | None:
            payouts = self.seller_payouts(seller_account_id, currency) or SellerPayouts(
                id=agg_id, meta=meta, seller_account_id=seller_account_id, currency=currency)
            payout_id = payouts.request(meta, earned_minor=earned_minor, destination=destination)
            if payout_id is not None:
                self.save(payouts)
            return payout_id

        return self.retrying(command)

    def send_payout(self, meta: dict, seller_account_id: str, currency: str, payout_id: str) -> str:
        """Make the Stripe transfer for a requested payout; return its status afterwards.

        The gateway is a :class:`domain.model.ports.PayoutGateway`: ``Unavailable`` is transient,
        ``InvalidInput`` a permanent refusal (the workers' Stripe errors subclass both).

        Raises:
            Unavailable: transient; the caller retries with backoff (same id).
        """
        payouts = self.seller_payouts(seller_account_id, currency)
        if payouts is None:
            raise NotFound("no payouts for this seller")
        payout = payouts.pending(payout_id)
        if payout["status"] != "requested" or self.market.money.cards is None:
            return payout["status"]  # done already, or no Stripe: recorded as pending
        try:
            transfer = self.market.money.cards.create_transfer(amount_minor=payout["amount_minor"], currency=currency,
                                                     destination=payout["destination"], payout_id=payout_id)
        except Unavailable as exc:
            self._payout_outcome(meta, seller_account_id, currency, payout_id, failed=(repr(exc), True))
            raise
        except InvalidInput as exc:
            self._payout_outcome(meta, seller_account_id, currency, payout_id, failed=(repr(exc), False))
            return "failed"
        self._payout_outcome(meta, seller_account_id, currency, payout_id, transfer_id=transfer["id"])
        return "sent"

    def _payout_outcome(self, meta: dict, seller: str, currency: str, payout_id: str, *,
                        transfer_id: str = "", failed: tuple[str, bool] | None = None) -> None:
        def command() -> None:
            payouts = self.seller_payouts(seller, currency)
            assert payouts is not None
            if failed is None:
                payouts.mark_sent(meta, payout_id, transfer_id)
            else:
                payouts.mark_failed(meta, payout_id, failed[0], retryable=failed[1])
            self.save(payouts)

        self.retrying(command)
