"""Channel commands: wallets, opening and funding on a real rail, debits, close and expiry.

Funding is credited only from proof the hub checks itself: the Channels contract's own
event for an on-chain deposit (read by transaction hash; each ``(tx_hash, log_index)``
claimed once through an ``Index`` saved in the same transaction as the channel), or a
verified ``payment_intent.succeeded`` webhook (each intent id claimed once the same way).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from domain.app.service import Service
from domain.model.account import Account
from domain.model.channel import Channel
from domain.model.errors import (
    AlreadyExists,
    DepositAlreadyCredited,
    InvalidInput,
    NotFound,
    PaymentRailUnavailable,
    SelfDealing,
    WalletMismatch,
    WalletRequired,
)
from domain.model.ids import NS_PLATFORM, natural_id, parse_uuid
from domain.model.index import Index
from domain.model.money import SCALES, check_currency
from domain.model.voucher import verify_voucher
from domain.model.wallet import Wallet, check_address, verify_wallet_proof

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.ports import CardGateway, ChainChannels

NS_WALLET = natural_id(NS_PLATFORM, "wallet")
NS_WALLET_ADDRESS = natural_id(NS_PLATFORM, "wallet-address")
NS_CHANNEL_REQUEST = natural_id(NS_PLATFORM, "channel-request")
NS_CHAIN_CHANNEL = natural_id(NS_PLATFORM, "chain-channel")
NS_DEPOSIT = natural_id(NS_PLATFORM, "chain-deposit")
NS_CARD_PAYMENT = natural_id(NS_PLATFORM, "card-payment")
DEBIT_ATTEMPTS = 40
# Other commands on a channel race its debits too (a group commit every few ms at full
# load): as many attempts, each on the channel fast-forwarded (``Marketplace.load``).
RACING_ATTEMPTS = 40
PURPOSE_MAX = 200


@dataclass(frozen=True)
class MoneyConfig:
    """Money settings the commands need (from ``ops.settings``)."""

    fee_bps: int = 500
    unsigned_allowance_minor: int = 0
    card_channel_ttl_s: int = 30 * 24 * 3600
    settle_margin_s: int = 3600  # settle this long before expiry, well before the reclaim window
    token_currency: str = "TUSD"  # noqa: S105 - a token symbol, not a secret


def request_hash(body: dict[str, Any]) -> str:
    """What makes two debit requests "the same" under one Idempotency-Key.

    ``body`` is already normalised (str, int, None and one nested dict), so sorted-key JSON
    is canonical for it; full RFC 8785 costs more and is kept for signed documents.
    """
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


AMOUNT_MINOR_MAX = 10**15


def check_amount_minor(amount_minor: Any) -> int:
    """An amount a buyer asks to pay: a positive integer (never a float such as 1e3: checked
    before anything is recorded, so a refused request leaves no pending channel behind)."""
    if type(amount_minor) is not int or not 1 <= amount_minor <= AMOUNT_MINOR_MAX:
        raise InvalidInput(f"amount_minor must be an integer within 1..{AMOUNT_MINOR_MAX}", param="amount_minor")
    return amount_minor


def check_idempotency_key(key: Any) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= 255 or not key.isprintable():
        raise InvalidInput("send an Idempotency-Key header of 1..255 printable characters", param="Idempotency-Key")
    return key


class MoneyService(Service):
    """The money service of the marketplace (composed into ``Marketplace.money``)."""

    def __init__(self, market: Marketplace, config: MoneyConfig, *,
                 chain: Callable[[], ChainChannels] | None = None, cards: CardGateway | None = None) -> None:
        super().__init__(market)
        self.config = config
        self.cards = cards  # None when the card rail is not configured (no Stripe key)
        self._chain_factory = chain  # built on first use (in-process EVM or JSON-RPC)
        self._money_cache: dict[str, Any] = {}

    # -- adapters ------------------------------------------------------------------------------
    def chain(self) -> ChainChannels:
        if self._chain_factory is None:
            raise PaymentRailUnavailable("this hub has no chain configured")
        return self._chain_factory()

    def card_gateway(self) -> CardGateway:
        if self.cards is None:
            raise PaymentRailUnavailable("card payments are not configured on this hub (no Stripe key)")
        return self.cards

    def _cache(self) -> dict[str, Any]:
        return self._money_cache

    # -- wallets --------------------------------------------------------------------------------
    def bind_wallet(self, meta: dict, account_id: str, *, address: str, signature: str) -> dict[str, Any]:
        """Bind the wallet the account proved it controls (set once; the same one again is fine)."""
        address = verify_wallet_proof(account_id, address, signature, self.hub_url)

        def command() -> dict[str, Any]:
            wallet_id = natural_id(NS_WALLET, account_id)
            if self.exists(wallet_id):
                wallet = self.load(Wallet, wallet_id)
                if wallet.address != address:
                    raise AlreadyExists("this account already bound another wallet", param="address")
                return wallet.to_public()
            wallet = Wallet(id=wallet_id, meta=meta, account_id=account_id, address=address)
            index = Index(id=natural_id(NS_WALLET_ADDRESS, address.lower()), meta=meta, kind="wallet",
                          target_id=account_id)
            self.save(wallet, index)
            return wallet.to_public()

        return self.retrying(command)

    def wallet_of(self, account_id: str) -> str:
        """The account's bound address (cached: a binding never changes)."""
        cache = self._cache()
        key = f"wallet:{account_id}"
        if key not in cache:
            try:
                cache[key] = self.load(Wallet, natural_id(NS_WALLET, account_id)).address
            except NotFound:
                raise WalletRequired(f"account {account_id} has no wallet bound (POST /v1/me/wallet)") from None
        return cache[key]

    # -- reading --------------------------------------------------------------------------------
    def channel(self, channel_id: str | UUID) -> Channel:
        return self.load(Channel, parse_uuid(str(channel_id), param="channel_id"), "channel")

    def channel_for(self, account_id: str, channel_id: str, *, auditor: bool = False) -> Channel:
        """The channel if the caller is its buyer (or an auditor); otherwise NotFound."""
        channel = self.channel(channel_id)
        if channel.buyer_account_id != account_id and not auditor:
            raise NotFound("channel not found")
        return channel

    # -- opening and funding --------------------------------------------------------------------
    def open_card_channel(
        self, meta: dict, account_id: str, *, currency: str, amount_minor: int, idempotency_key: str,
    ) -> dict[str, Any]:
        """Open a card-funded channel (pending) and its PaymentIntent; the webhook funds it."""
        gateway = self.card_gateway()
        check_currency(currency)
        if SCALES[currency] != 2:
            raise InvalidInput("card channels take a fiat currency", param="currency")
        check_amount_minor(amount_minor)
        key = check_idempotency_key(idempotency_key)
        channel_id = natural_id(NS_CHANNEL_REQUEST, f"{account_id}:{key}")

        def command() -> Channel:
            if self.exists(channel_id):
                channel = self.channel(channel_id)
                if channel.currency != currency or channel.buyer_account_id != account_id:
                    raise AlreadyExists("this Idempotency-Key opened another channel", param="Idempotency-Key")
                return channel
            channel = Channel(
                id=channel_id, meta=meta, buyer_account_id=account_id, currency=currency, rail="card",
                deposit_minor=0, funding_ref="", expiry_s=self.now_s() + self.config.card_channel_ttl_s,
                fee_bps=self.config.fee_bps, unsigned_allowance_minor=0, buyer_wallet="", chain_channel_id="",
                opened_at_s=self.now_s())
            self.save(channel)
            return channel

        channel = self.retrying(command)
        # Intent (the channel) first, then the outside call, keyed by our id: a retry after
        # a crash here gets the same PaymentIntent back from Stripe.
        intent = gateway.create_payment_intent(amount_minor=amount_minor, currency=currency,
                                               channel_id=str(channel_id), idempotency_key=f"{channel_id}:open")
        return {**channel.to_public(), "payment": {"payment_intent_id": intent["id"],
                                                   "client_secret": intent["client_secret"]}}

    def top_up_card_channel(
        self, meta: dict, account_id: str, channel_id: str, *, amount_minor: int, idempotency_key: str,
    ) -> dict[str, Any]:
        """A further PaymentIntent for an open card channel."""
        gateway = self.card_gateway()
        check_amount_minor(amount_minor)
        key = check_idempotency_key(idempotency_key)
        channel = self.channel_for(account_id, channel_id)
        if channel.rail != "card":
            raise InvalidInput("this channel is funded on chain: send a tx_hash", param="tx_hash")
        if channel.status not in ("pending", "open"):
            raise InvalidInput(f"channel is {channel.status}", param="channel_id")
        intent = gateway.create_payment_intent(amount_minor=amount_minor, currency=channel.currency,
                                               channel_id=str(channel.id), idempotency_key=f"{channel.id}:top-up:{key}")
        return {**channel.to_public(), "payment": {"payment_intent_id": intent["id"],
                                                   "client_secret": intent["client_secret"]}}

    def credit_card_payment(self, meta: dict, intent: dict[str, Any]) -> dict[str, Any]:
        """Fund a channel from a *verified* ``payment_intent.succeeded``; a replay changes nothing.

        A payment for a channel that has settled since (``returned``) is recorded and
        refunded to the card by the refund sweep, so money that arrived is never lost.
        """
        pi_id = intent.get("id")
        channel_ref = (intent.get("metadata") or {}).get("channel_id")
        amount = intent.get("amount_received") or intent.get("amount")
        currency = str(intent.get("currency") or "").upper()
        if not isinstance(pi_id, str) or not channel_ref or type(amount) is not int:
            raise InvalidInput("payment intent lacks id, metadata.channel_id or amount", param="data.object")

        def command() -> dict[str, Any]:
            index_id = natural_id(NS_CARD_PAYMENT, pi_id)
            channel = self.channel(channel_ref)
            if self.exists(index_id):
                return {"credited": False, "returned": False, "channel": channel.to_public()}
            if channel.rail != "card" or channel.currency != currency:
                raise InvalidInput("payment intent does not match its channel", param="data.object")
            late = channel.status == "settled"  # paid after the close: refunded, never lost
            if late:
                channel.return_late_payment(meta, amount_minor=amount, funding_ref=f"stripe:{pi_id}")
            else:
                channel.top_up(meta, amount_minor=amount, funding_ref=f"stripe:{pi_id}")
            index = Index(id=index_id, meta=meta, kind="card_payment", target_id=str(channel.id))
            channel.check_invariants()
            self.save(channel, index)
            return {"credited": not late, "returned": late, "channel": channel.to_public()}

        return self.retrying(command, attempts=RACING_ATTEMPTS)

    def open_chain_channel(self, meta: dict, account_id: str, *, tx_hash: str) -> dict[str, Any]:
        """Open the hub's channel from the contract's ChannelOpened log in ``tx_hash``."""
        self.wallet_of(account_id)  # no wallet, no chain channel: refuse before any RPC
        chain = self.chain()
        opened = [d for d in chain.read_deposit(tx_hash) if d.kind == "opened"]
        if len(opened) != 1:
            raise InvalidInput("that transaction opened no channel of our contract", param="tx_hash")
        deposit = opened[0]
        self._check_depositor(account_id, deposit.buyer)
        channel_id = natural_id(NS_CHAIN_CHANNEL, f"{deposit.contract.lower()}:{deposit.channel_id}")

        def command() -> dict[str, Any]:
            index_id = natural_id(NS_DEPOSIT, f"{deposit.tx_hash}:{deposit.log_index}")
            if self.exists(index_id):
                raise DepositAlreadyCredited("this deposit was already credited", param="tx_hash")
            channel = Channel(
                id=channel_id, meta=meta, buyer_account_id=account_id, currency=self.config.token_currency,
                rail="chain", deposit_minor=deposit.amount, funding_ref=f"{deposit.tx_hash}:{deposit.log_index}",
                expiry_s=deposit.expiry, fee_bps=deposit.fee_bps,
                unsigned_allowance_minor=self.config.unsigned_allowance_minor, buyer_wallet=deposit.buyer,
                chain_channel_id=deposit.channel_id, opened_at_s=self.now_s())
            index = Index(id=index_id, meta=meta, kind="chain_deposit", target_id=str(channel_id))
            self.save(channel, index)
            return channel.to_public()

        return self.retrying(command)

    def top_up_chain_channel(self, meta: dict, account_id: str, channel_id: str, *,
                             tx_hash: str) -> dict[str, Any]:
        """Credit ChannelToppedUp logs of ``tx_hash`` for this channel, each once."""
        channel = self.channel_for(account_id, channel_id)
        if channel.rail != "chain":
            raise InvalidInput("this channel is card-funded: send amount_minor", param="amount_minor")
        deposits = [d for d in self.chain().read_deposit(tx_hash)
                    if d.kind == "topped_up" and d.channel_id == channel.chain_channel_id]
        if not deposits:
            raise InvalidInput("that transaction topped up no deposit of this channel", param="tx_hash")

        def command() -> dict[str, Any]:
            fresh = self.channel(channel.id)
            indexes = []
            for d in deposits:
                index_id = natural_id(NS_DEPOSIT, f"{d.tx_hash}:{d.log_index}")
                if self.exists(index_id):
                    raise DepositAlreadyCredited("this deposit was already credited", param="tx_hash")
                fresh.top_up(meta, amount_minor=d.amount, funding_ref=f"{d.tx_hash}:{d.log_index}")
                indexes.append(Index(id=index_id, meta=meta, kind="chain_deposit", target_id=str(fresh.id)))
            fresh.check_invariants()
            self.save(fresh, *indexes)
            return fresh.to_public()

        return self.retrying(command, attempts=RACING_ATTEMPTS)

    def _check_depositor(self, account_id: str, depositor: str) -> None:
        if self.wallet_of(account_id) != check_address(depositor):
            raise WalletMismatch("the deposit was made by another wallet than yours", param="tx_hash")

    # -- debits ---------------------------------------------------------------------------------
    def debit_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """Normalise a debit request (what the idempotency hash covers)."""
        seller = str(parse_uuid(body.get("seller_account_id"), param="seller_account_id"))
        purpose = body.get("purpose", "")
        if not isinstance(purpose, str) or len(purpose) > PURPOSE_MAX:
            raise InvalidInput(f"purpose must be a string of at most {PURPOSE_MAX} characters", param="purpose")
        voucher = body.get("voucher")
        if voucher is not None:
            cumulative, signature = voucher.get("cumulative_minor"), voucher.get("signature")
            if type(cumulative) is not int or not isinstance(signature, str):
                raise InvalidInput("voucher needs cumulative_minor and a 0x signature", param="voucher")
            voucher = {"cumulative_minor": cumulative, "signature": signature.lower()}
        return {"amount_minor": body.get("amount_minor"), "seller_account_id": seller, "purpose": purpose,
                "voucher": voucher}

    def check_seller(self, seller_account_id: str, *, buyer_account_id: str) -> None:
        """The seller must exist with the seller role (cached: roles are never revoked) and
        must not be the channel's buyer: an account with both roles paying itself from its
        own channel would turn the buyer's deposit into seller earnings (and fees) at will.

        Raises:
            SelfDealing: the seller is the channel's buyer.
            InvalidInput: no such account, or it is not a seller.
        """
        if seller_account_id == str(buyer_account_id):
            raise SelfDealing("a channel cannot pay its own buyer", param="seller_account_id")
        cache = self._cache()
        key = f"seller:{seller_account_id}"
        if key not in cache:
            try:
                account = self.load(Account, UUID(seller_account_id), "seller account")
            except NotFound:
                raise InvalidInput("seller_account_id names no account", param="seller_account_id") from None
            if "seller" not in account.roles:
                raise InvalidInput("seller_account_id is not a seller", param="seller_account_id")
            cache[key] = True

    def verify_debit_voucher(self, channel: Channel, voucher: dict[str, Any] | None) -> None:
        if voucher is None:
            return
        try:
            signature = bytes.fromhex(voucher["signature"].removeprefix("0x"))
        except ValueError:
            raise InvalidInput("voucher.signature must be hex", param="voucher.signature") from None
        verify_voucher(channel.buyer_wallet, self.chain().domain(), channel.chain_channel_id,
                       voucher["cumulative_minor"], signature)

    def debit(self, meta: dict, account_id: str, channel_id: str, *, idempotency_key: str,
              body: dict[str, Any]) -> dict[str, Any]:
        """Debit one channel, one transaction per debit (the batcher groups these instead)."""
        key = check_idempotency_key(idempotency_key)
        normal = self.debit_body(body)
        digest = request_hash(normal)

        def command() -> dict[str, Any]:
            channel = self.channel_for(account_id, channel_id)
            seen = channel.replay(key, digest)
            if seen is not None:
                return seen
            self.check_seller(normal["seller_account_id"], buyer_account_id=channel.buyer_account_id)
            if channel.rail == "chain":
                self.wallet_of(normal["seller_account_id"])
                self.verify_debit_voucher(channel, normal["voucher"])
            result = channel.debit(meta, key=key, request_hash=digest, amount_minor=normal["amount_minor"],
                                   seller_account_id=normal["seller_account_id"], purpose=normal["purpose"],
                                   now_s=self.now_s(), voucher=normal["voucher"])
            channel.check_invariants()
            self.save(channel)
            return result

        return self.retrying(command, attempts=DEBIT_ATTEMPTS)

    # -- close and expiry -----------------------------------------------------------------------
    def close_channel(self, meta: dict, account_id: str, channel_id: str) -> dict[str, Any]:
        """Stop debits. Card channels settle at once (refund recorded; the refund sweep sends it to
        Stripe); chain ones queue settlement."""
        self.channel_for(account_id, channel_id)
        return self._close(meta, channel_id, reason="requested")

    def _close(self, meta: dict, channel_id: str | UUID, *, reason: str) -> dict[str, Any]:
        def command() -> dict[str, Any]:
            channel = self.channel(channel_id)
            changed = channel.request_close(meta, now_s=self.now_s(), reason=reason)
            if channel.rail == "card" or (channel.rail == "chain" and channel.voucher_minor == 0):
                # Nothing to submit on chain (card, or nothing signed): settle internally. An
                # unsettled chain deposit returns to the buyer by the contract's reclaim.
                channel.settle(meta, settlement_ref="internal")
                changed = True
            channel.check_invariants()
            if changed:
                self.save(channel)
            return channel.to_public()

        return self.retrying(command, attempts=RACING_ATTEMPTS)

    def expire_channel(self, meta: dict, channel_id: str | UUID) -> dict[str, Any]:
        """Cron: close a channel at (chain: shortly before) its expiry."""
        return self._close(meta, channel_id, reason="expired")
