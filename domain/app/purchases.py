"""Purchase commands: buy a listing from a channel, read purchases, expire and revoke tokens.

A purchase takes the debits' path (``domain.app.debit_batcher``): it is checked, queued on
the process that owns the channel, applied in arrival order with the batch's debits, and
saved in the batch's ONE transaction: the channel's ``Debited`` and the ``Purchased`` event
(with its signed delivery token) commit together or not at all.

The batch decides from cached listings and devices, so that a purchase costs no store read
on the event loop once caches are warm. The saver makes that safe: in the batch's
transaction, before recording, it checks that every listing and device the batch read is
still at the version read and that no purchase it creates already exists
(``domain.model.ports.StaleRead``); otherwise nothing is recorded, the stale entries are
dropped and the batch runs again on fresh state. So the price, currency, delivery commitment
and seller keys a token carries are those of the versions current when the purchase commits.

Refusals (each a distinct code, all decided before anything is recorded): ``listing_not_found``,
``own_listing``, ``listing_delisted``, ``listing_not_deliverable``, ``seller_device_suspended``,
``currency_mismatch``, ``channel_exhausted`` (and the channel's own: not open, expired, voucher).
A refusal decided on a cached listing or device is decided again on a fresh read first.

Contract for the node-to-hub traces (another service records redemptions, receipts and
confirmations): ``market.purchases.purchase(purchase_id)`` returns the :class:`Purchase`;
its pure methods ``record_redemption``, ``record_receipt`` and ``record_confirmation``
decide; the caller saves the purchase together with its own aggregate in one
``market.save(...)`` and retries on a version conflict.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from domain.app.service import Service
from domain.model.delivery import MAX_LIFETIME_S, issue_delivery_token
from domain.model.device import Device
from domain.model.errors import (
    CurrencyMismatch,
    Forbidden,
    IdempotencyKeyReused,
    InvalidInput,
    ListingDelisted,
    ListingNotDeliverable,
    ListingNotFound,
    MarketError,
    NotFound,
    OwnListing,
    PurchaseNotFound,
    SellerDeviceSuspended,
)
from domain.model.ids import parse_uuid
from domain.model.keys import SigningKey
from domain.model.listing import Listing
from domain.model.purchase import Purchase

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.channel import Channel

CACHE_MAX = 10_000
RECENT_MAX = 4096  # purchases kept for retries (each holds its token: ~2 KB)
_JKT = re.compile(r"^[A-Za-z0-9_-]{43}$")
_ENDPOINT_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,253}:[0-9]{1,5}$")


@dataclass(frozen=True)
class PurchaseConfig:
    """Token deadlines (``ops.settings``): the first byte within ``start_window_s``, the whole
    transfer within ``transfer_window_s``, both counted from the purchase."""

    start_window_s: int = 15 * 60
    transfer_window_s: int = 24 * 3600

    def __post_init__(self) -> None:
        if not 0 < self.start_window_s <= self.transfer_window_s <= MAX_LIFETIME_S:
            raise ValueError("need 0 < start_window_s <= transfer_window_s <= 30 days")


@dataclass
class BatchReads:
    """What one batch decided on: the versions it read, the purchases it creates."""

    versions: dict[UUID, int | None] = field(default_factory=dict)
    created: dict[UUID, Purchase] = field(default_factory=dict)


def token_endpoint(endpoint: str) -> str | None:
    """``host:port`` of a device's registered endpoint (an http(s) URL), for the token's
    ``endpoint`` claim; None when it names no port (the buyer then says where, ``--seller``)."""
    rest = endpoint.split("://", 1)[-1].split("/", 1)[0]
    return rest if _ENDPOINT_HOST_PORT.fullmatch(rest) else None


class PurchaseService(Service):
    """The purchases service of the marketplace (composed into ``Marketplace.purchases``)."""

    def __init__(self, market: Marketplace, config: PurchaseConfig | None = None) -> None:
        super().__init__(market)
        self.config = config or PurchaseConfig()
        self._listings: dict[UUID, Listing] = {}
        self._devices: dict[UUID, Device] = {}
        self._recent: dict[UUID, Purchase] = {}  # committed here lately: retries replay without a read
        self._maybe_exist: set[UUID] = set()  # a save found these existing: read them before deciding
        self._signers: dict[str, SigningKey] = {}

    # -- reading ----------------------------------------------------------------------------
    def purchase(self, purchase_id: str | UUID) -> Purchase:
        """The purchase aggregate. Raises PurchaseNotFound."""
        try:
            return self.load(Purchase, parse_uuid(str(purchase_id), param="purchase_id"), "purchase")
        except NotFound:
            raise PurchaseNotFound("purchase not found") from None

    def view(self, account_id: str, roles: Sequence[str], purchase_id: str) -> dict[str, Any]:
        """The purchase for its buyer (with the token), its seller, or an auditor or admin;
        anyone else gets PurchaseNotFound (its existence is not theirs to learn)."""
        purchase = self.purchase(purchase_id)
        if purchase.buyer_account_id == account_id:
            return purchase.to_public(with_token=True)
        if purchase.seller_account_id == account_id or {"auditor", "admin"} & set(roles):
            return purchase.to_public()
        raise PurchaseNotFound("purchase not found")

    # -- the request, before it is queued -----------------------------------------------------
    def purchase_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """Normalise a purchase request (what the idempotency hash covers)."""
        listing_id = str(parse_uuid(body.get("listing_id"), param="listing_id"))
        channel_id = str(parse_uuid(body.get("channel_id"), param="channel_id"))
        jkt = body.get("buyer_jkt")
        if not isinstance(jkt, str) or not _JKT.fullmatch(jkt):
            raise InvalidInput("buyer_jkt must be the RFC 7638 thumbprint of your purchase key (43 base64url "
                               "characters; `aim-node purchase-key` prints it)", param="buyer_jkt")
        return {"listing_id": listing_id, "channel_id": channel_id, "buyer_jkt": jkt,
                "voucher": _voucher(body.get("voucher"))}

    def recent_answer(self, purchase_id: UUID, digest: str) -> dict[str, Any] | None:
        """The answer of a purchase committed by this process lately, if this is its retry."""
        purchase = self._recent.get(purchase_id)
        return None if purchase is None else _replay(purchase, digest)

    def precheck(self, account_id: str, body: dict[str, Any], channel: Channel) -> None:
        """Refusals that cached facts decide for good (they never change back): the listing
        does not exist, is the buyer's own, was delisted, its device was suspended; and the
        chain rail's voucher and seller wallet. Everything else is decided in the batch."""
        listing = self._listing(body["listing_id"])
        if listing.account_id == account_id:
            raise OwnListing("you cannot buy your own listing", param="listing_id")
        if listing.delisted:
            raise ListingDelisted("the listing was delisted", param="listing_id")
        if self._device(listing.device_id).suspended:
            raise SellerDeviceSuspended("the seller's device is suspended", param="listing_id")
        if channel.rail == "chain":
            self.market.money.wallet_of(listing.account_id)
            self.market.money.verify_debit_voucher(channel, body["voucher"])

    # -- in the batch ---------------------------------------------------------------------------
    def apply(self, meta: dict, *, account_id: str, purchase_id: UUID, key: str, digest: str,
              body: dict[str, Any], channel: Channel, now_s: int, reads: BatchReads) -> dict[str, Any]:
        """Decide one purchase inside a batch: debit ``channel`` and create the purchase with
        its token (in ``reads.created``), or replay it, or raise a refusal having changed nothing."""
        existing = reads.created.get(purchase_id) or self._recent.get(purchase_id)
        if existing is None and purchase_id in self._maybe_exist:
            existing = self._stored(purchase_id)
        if existing is not None:
            return _replay(existing, digest)
        reads.versions[purchase_id] = None
        listing, device = self._decide_on(body["listing_id"], account_id, channel)
        reads.versions[listing.id] = listing.version
        reads.versions[device.id] = device.version
        jti = secrets.token_urlsafe(16)  # random: the node binds it, nobody may guess it
        token, kid = self._issue(purchase_id, listing, device, body["buyer_jkt"], jti, now_s)
        fee_minor = 0
        if listing.price_minor > 0:
            paid = channel.debit(meta, key=f"purchase:{purchase_id}", request_hash=digest,
                                 amount_minor=listing.price_minor, seller_account_id=listing.account_id,
                                 purpose=f"purchase {purchase_id}", now_s=now_s, voucher=body["voucher"])
            if paid["replayed"]:  # paid before, on another process: the purchase exists
                return _replay(self._stored(purchase_id), digest)
            fee_minor = paid["fee_minor"]
        purchase = Purchase(
            id=purchase_id, meta=meta, buyer_account_id=account_id, seller_account_id=listing.account_id,
            seller_device_id=str(device.id), listing_id=str(listing.id), listing_version=listing.version,
            channel_id=str(channel.id), price_minor=listing.price_minor, fee_minor=fee_minor,
            currency=listing.currency, idempotency_key=key, request_hash=digest, token=token,
            kid=kid, jti=jti, cnf_jkt=body["buyer_jkt"], issued_at_s=now_s,
            start_by_s=now_s + self.config.start_window_s, expires_at_s=now_s + self.config.transfer_window_s)
        reads.created[purchase_id] = purchase
        return {**purchase.to_public(with_token=True), "replayed": False}

    def _decide_on(self, listing_id: str, account_id: str, channel: Channel) -> tuple[Listing, Device]:
        listing = self._listing(listing_id)
        device = self._device(listing.device_id)
        try:
            _refuse(listing, device, channel, account_id)
        except MarketError:
            # The cache may be behind (another host updated the listing): decide again on
            # a fresh read, so a stale copy never refuses a purchase for good.
            listing = self._listing(listing_id, fresh=True)
            device = self._device(listing.device_id, fresh=True)
            _refuse(listing, device, channel, account_id)
        return listing, device

    def _issue(self, purchase_id: UUID, listing: Listing, device: Device, jkt: str, jti: str,
               now_s: int) -> tuple[str, str]:
        delivery = listing.metadata["delivery"]
        key = device.current_key
        claims: dict[str, Any] = {
            "iss": self.hub_url, "aud": str(device.id), "sub": str(purchase_id), "jti": jti, "iat": now_s,
            "start_by": now_s + self.config.start_window_s, "exp": now_s + self.config.transfer_window_s,
            "listing_id": str(listing.id), "listing_version": listing.version,
            "content_hash": delivery["object_hash"], "size_bytes": delivery["size_bytes"],
            "byte_limit": 2 * delivery["size_bytes"],  # each byte served at most twice (resumes)
            "blocks": delivery["blocks"], "cnf": {"jkt": jkt},
            "seller_keys": {"ed25519": key["public_key"], "x25519": key["kx_public_key"]},
        }
        endpoint = token_endpoint(device.endpoint)
        if endpoint is not None:
            claims["endpoint"] = endpoint
        kid = self.keyring().current("signing")
        return issue_delivery_token(claims, self._signer(kid), kid), kid

    def _signer(self, kid: str) -> SigningKey:
        signer = self._signers.get(kid)
        if signer is None:
            signer = self._signers[kid] = SigningKey.from_seed(bytes(self.secrets.signing_key(kid)))
        return signer

    # -- after the batch --------------------------------------------------------------------------
    def committed(self, purchases: Sequence[Purchase]) -> None:
        """Remember purchases this process just committed (their retries replay from memory)."""
        if len(self._recent) + len(purchases) > RECENT_MAX:
            self._recent.clear()
        for purchase in purchases:
            self._recent[purchase.id] = purchase
            self._maybe_exist.discard(purchase.id)

    def stale(self, ids: Sequence[UUID]) -> None:
        """A save found these changed or existing: drop cached copies, read them next time."""
        if len(self._maybe_exist) > CACHE_MAX:
            self._maybe_exist.clear()
        for aggregate_id in ids:
            self._listings.pop(aggregate_id, None)
            self._devices.pop(aggregate_id, None)
            self._maybe_exist.add(aggregate_id)

    # -- lifecycle ------------------------------------------------------------------------------
    def expire_token(self, meta: dict, purchase_id: str | UUID) -> bool:
        """Record ``TokenExpired`` when a deadline passed (the sweep); False if none did."""

        def command() -> bool:
            purchase = self.purchase(purchase_id)
            if not purchase.expire(meta, now_s=self.now_s()):
                return False
            self.save(purchase)
            return True

        return self.retrying(command)

    def revoke_token(self, meta: dict, account_id: str, roles: Sequence[str], purchase_id: str, *,
                     reason: str = "") -> dict[str, Any]:
        """The seller or an admin withdraws a token nobody redeemed yet (a repeat changes nothing).

        Raises:
            PurchaseNotFound: unknown, or not visible to the caller.
            Forbidden: the buyer or an auditor (they see the purchase, but may not revoke it).
            PurchaseNotRevocable: redeemed, delivered or expired already.
        """

        def command() -> dict[str, Any]:
            purchase = self.purchase(purchase_id)
            if purchase.seller_account_id != account_id and "admin" not in roles:
                self.view(account_id, roles, purchase_id)  # NotFound unless they may see it
                raise Forbidden("only the seller or an admin may revoke a delivery token")
            if purchase.revoke(meta, by=meta.get("actor", ""), reason=reason, now_s=self.now_s()):
                self.save(purchase)
            return purchase.to_public(with_token=purchase.buyer_account_id == account_id)

        return self.retrying(command)

    # -- caches ----------------------------------------------------------------------------------
    def _listing(self, listing_id: str, *, fresh: bool = False) -> Listing:
        key = UUID(listing_id)
        listing = None if fresh else self._listings.get(key)
        if listing is None:
            try:
                listing = self.load(Listing, key)
            except NotFound:
                raise ListingNotFound("listing not found", param="listing_id") from None
            _bounded_put(self._listings, key, listing)
        return listing

    def _device(self, device_id: str, *, fresh: bool = False) -> Device:
        key = UUID(device_id)
        device = None if fresh else self._devices.get(key)
        if device is None:
            device = self.load(Device, key, "seller device")
            _bounded_put(self._devices, key, device)
        return device

    def _stored(self, purchase_id: UUID) -> Purchase:
        purchase = self.purchase(purchase_id)
        self.committed([purchase])
        return purchase


def _refuse(listing: Listing, device: Device, channel: Channel, account_id: str) -> None:
    """Raise the refusal a purchase of ``listing`` from ``channel`` meets, if any (in the
    documented order)."""
    if listing.account_id == account_id:
        raise OwnListing("you cannot buy your own listing", param="listing_id")
    if listing.delisted:
        raise ListingDelisted("the listing was delisted", param="listing_id")
    if "delivery" not in listing.metadata:
        raise ListingNotDeliverable("the listing has no delivery commitment (its seller publishes with --file)",
                                    param="listing_id")
    if device.suspended:
        raise SellerDeviceSuspended("the seller's device is suspended", param="listing_id")
    if listing.currency != channel.currency:
        raise CurrencyMismatch(f"the listing is priced in {listing.currency}, the channel holds {channel.currency}",
                               param="channel_id")


def _voucher(voucher: Any) -> dict[str, Any] | None:
    """A chain channel's voucher as debits normalise it (``MoneyService.debit_body``)."""
    if voucher is None:
        return None
    cumulative = voucher.get("cumulative_minor") if isinstance(voucher, dict) else None
    signature = voucher.get("signature") if isinstance(voucher, dict) else None
    if type(cumulative) is not int or not isinstance(signature, str):
        raise InvalidInput("voucher needs cumulative_minor and a 0x signature", param="voucher")
    return {"cumulative_minor": cumulative, "signature": signature.lower()}


def _replay(purchase: Purchase, digest: str) -> dict[str, Any]:
    if not purchase.replays(digest):
        raise IdempotencyKeyReused("this Idempotency-Key was used with another request", param="Idempotency-Key")
    return {**purchase.to_public(with_token=True), "replayed": True}


def _bounded_put(cache: dict[UUID, Any], key: UUID, value: Any) -> None:
    if len(cache) > CACHE_MAX:
        cache.clear()
    cache[key] = value
