"""Purchase: one sale of one listing version, paid from a channel, with its delivery token.

A purchase is recorded in the same transaction as the channel's ``Debited`` event
(``domain.app.debit_batcher``), so a sale is paid exactly when it exists. Its ``Purchased``
event carries the hub-signed delivery token (``domain.model.delivery``), so a retry under the
same Idempotency-Key replays the same purchase and the same token.

The token's lifecycle is recorded on the purchase, from facts the hub checks itself:

* ``TokenRedeemed``: the seller's node bound the token's ``jti`` to the buyer's ``cnf`` key
  at the first byte (reported by the node, ``record_redemption``);
* ``ReceiptRecorded``: a delivery receipt signed by the seller device (``record_receipt``);
* ``ConfirmationRecorded``: a delivery confirmation signed by the buyer's ``cnf`` key
  (``record_confirmation``);
* ``Delivered``: a receipt with outcome ``complete`` covering the whole object names (by
  digest) a recorded confirmation of every block;
* ``TokenExpired``: the hub's sweep found the token past ``start_by`` never redeemed
  (``not_started``) or past ``exp`` not delivered (``not_delivered``);
* ``TokenRevoked``: the seller or an admin withdrew a token nobody redeemed yet.

Facts from the nodes are recorded even after an expiry or a revocation: they happened (a
node's report may arrive late through its outbox). ``status`` reads them in this order:
delivered, revoked, expired, redeemed, issued; a ``not_started`` expiry is undone by a
redemption reported later (the node bound the token in time; its report was late).

Pure: times come in as arguments (``now_s``, ``redeemed_at_ms``); no I/O, clock or randomness.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.delivery import CLOCK_SKEW_S, DeliveryClaims, check_claims, jwk_thumbprint
from domain.model.errors import (
    ConfirmationWrongSigner,
    InvalidInput,
    PurchaseNotRevocable,
    ReceiptInvalid,
    ReceiptWrongSigner,
    ReceiptWrongToken,
    RedemptionKeyMismatch,
    RedemptionWrongDevice,
    RedemptionWrongToken,
)
from domain.model.ids import NS_PLATFORM, natural_id
from domain.model.keys import VerifyKey, b64url_decode
from domain.model.receipts import check_against_token, digest, verify_confirmation, verify_receipt

NS_PURCHASE = natural_id(NS_PLATFORM, "purchase")
STATUSES = ("issued", "redeemed", "delivered", "expired", "revoked")
REVOKE_REASON_CHARS_MAX = 200


def check_binding(token_holder: Any, *, jti: str, device_id: str, buyer_jkt: str, at_ms: Any, report: str,
                  params: tuple[str, str]) -> None:
    """A node's report that it bound a token (a purchase's redemption, an invocation's binding)
    names that token, its audience device and its ``cnf`` key; ``params`` name the key and time
    fields in the report.

    Raises:
        RedemptionWrongToken, RedemptionWrongDevice, RedemptionKeyMismatch, InvalidInput.
    """
    owner = type(token_holder).__name__.lower()
    if jti != token_holder.jti:
        raise RedemptionWrongToken(f"the {report} names another token than this {owner}'s", param="jti")
    if device_id != token_holder.seller_device_id:
        raise RedemptionWrongDevice(f"the {report} is reported for another device than the token's audience",
                                    param="device_id")
    if buyer_jkt != token_holder.cnf_jkt:
        raise RedemptionKeyMismatch("the token was bound to another key than its cnf key", param=params[0])
    if type(at_ms) is not int or not 0 <= at_ms < 2**53:
        raise InvalidInput(f"{params[1]} must be epoch milliseconds", param=params[1])


def purchase_id_for(buyer_account_id: str, idempotency_key: str) -> UUID:
    """The purchase id of a buyer's request: a retry under the same key lands on the same id."""
    return natural_id(NS_PURCHASE, f"{buyer_account_id}\n{idempotency_key}")


def purchase_status(*, delivered: bool, revoked: bool, expired_reason: str, redeemed: bool) -> str:
    """The status the facts say (shared with the read model, so both always agree)."""
    if delivered:
        return "delivered"
    if revoked:
        return "revoked"
    if expired_reason == "not_delivered" or (expired_reason == "not_started" and not redeemed):
        return "expired"
    return "redeemed" if redeemed else "issued"


def token_claims(token: str) -> dict[str, Any]:
    """The claim set of a token this hub issued (its signature was made here: not re-checked)."""
    return json.loads(b64url_decode(token.split(".")[1]))


class Purchase(MarketAggregate):
    """A sale: who bought which listing version from which device, at what price, and its token."""

    @event("Purchased")
    def __init__(
        self, id: UUID, meta: dict, buyer_account_id: str, seller_account_id: str, seller_device_id: str,
        listing_id: str, listing_version: int, channel_id: str, price_minor: int, fee_minor: int, currency: str,
        idempotency_key: str, request_hash: str, token: str, kid: str, jti: str, cnf_jkt: str,
        issued_at_s: int, start_by_s: int, expires_at_s: int,
    ) -> None:
        self.buyer_account_id = buyer_account_id
        self.seller_account_id = seller_account_id
        self.seller_device_id = seller_device_id
        self.listing_id = listing_id
        self.listing_version = listing_version
        self.channel_id = channel_id
        self.price_minor = price_minor
        self.fee_minor = fee_minor
        self.currency = currency
        self.idempotency_key = idempotency_key
        self.request_hash = request_hash
        self.token = token
        self.kid = kid
        self.jti = jti
        self.cnf_jkt = cnf_jkt
        self.issued_at_s = issued_at_s
        self.start_by_s = start_by_s
        self.expires_at_s = expires_at_s
        self.redemption: dict[str, Any] | None = None
        self.receipts: dict[str, dict[str, Any]] = {}  # digest -> summary, in arrival order
        self.latest_receipt = ""  # digest of the receipt with the highest seq
        self.confirmations: dict[str, dict[str, Any]] = {}  # digest -> summary
        self.delivered: dict[str, Any] | None = None
        self.expired: dict[str, Any] | None = None  # {"reason", "at_s"}, the latest expiry
        self.revoked: dict[str, Any] | None = None  # {"reason", "by", "at_s"}

    # -- reading ----------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return purchase_status(delivered=self.delivered is not None, revoked=self.revoked is not None,
                               expired_reason=(self.expired or {}).get("reason", ""),
                               redeemed=self.redemption is not None)

    def delivery_claims(self) -> DeliveryClaims:
        """The token's claims, typed (the token was issued and checked by this hub)."""
        claims = token_claims(self.token)
        return DeliveryClaims(claims, self.token, self.kid, *check_claims(claims))

    def replays(self, request_hash: str) -> bool:
        """Whether a request under this purchase's Idempotency-Key is the same request."""
        return request_hash == self.request_hash

    # -- redemption (reported by the seller's node) -----------------------------------------
    def record_redemption(self, meta: dict, *, jti: str, device_id: str, buyer_jkt: str,
                          redeemed_at_ms: int) -> bool:
        """Record that the seller's node bound the token to the buyer's key at its first byte.

        Idempotent: a second report of the same binding records nothing and returns False
        (the first report's time is kept). Returns True when recorded.

        Raises:
            RedemptionWrongToken: ``jti`` is not this purchase's token.
            RedemptionWrongDevice: ``device_id`` is not the token's audience.
            RedemptionKeyMismatch: ``buyer_jkt`` is not the token's ``cnf`` thumbprint (the
                node bound the token to a key the hub never authorised).
            InvalidInput: ``redeemed_at_ms`` is not a non-negative integer.
        """
        check_binding(self, jti=jti, device_id=device_id, buyer_jkt=buyer_jkt, at_ms=redeemed_at_ms,
                      report="redemption", params=("buyer_jkt", "redeemed_at_ms"))
        if self.redemption is not None:
            return False
        self._token_redeemed(meta=meta, jti=jti, device_id=device_id, buyer_jkt=buyer_jkt,
                             redeemed_at_ms=redeemed_at_ms)
        return True

    @event("TokenRedeemed")
    def _token_redeemed(self, meta: dict, jti: str, device_id: str, buyer_jkt: str, redeemed_at_ms: int) -> None:
        self.redemption = {"jti": jti, "device_id": device_id, "buyer_jkt": buyer_jkt,
                           "redeemed_at_ms": redeemed_at_ms}

    # -- receipts and confirmations ----------------------------------------------------------
    def record_receipt(self, meta: dict, receipt_vc: Any, *, device_key: VerifyKey) -> bool:
        """Record a delivery receipt signed by the seller device (``device_key``: the device's
        key as the hub holds it, chosen by the caller, rotation grace included).

        The receipt must verify (``verify_receipt``) and be about this token
        (``check_against_token``). Idempotent per receipt digest (False when already
        recorded); the receipt with the highest ``seq`` is the latest. Records ``Delivered``
        when this makes the purchase delivered.

        Raises:
            ReceiptWrongSigner: issued by another key than ``device_key``.
            ReceiptInvalid: malformed, or its proof does not verify.
            ReceiptWrongToken: about another purchase, token, device or object.
        """
        if isinstance(receipt_vc, dict) and receipt_vc.get("issuer") != device_key.did_key:
            raise ReceiptWrongSigner("the receipt is issued by another key than the seller device's")
        subject = verify_receipt(receipt_vc, device_key=device_key)
        self._check_about_token(subject)
        receipt_digest = digest(receipt_vc)
        if receipt_digest in self.receipts:
            return False
        self._receipt_recorded(
            meta=meta, digest=receipt_digest, seq=subject["seq"], outcome=subject["outcome"],
            bytes_sent=subject["bytes_sent"], intervals=subject["intervals"], sessions=subject["sessions"],
            first_byte_ms=subject["first_byte_ms"], last_byte_ms=subject["last_byte_ms"],
            blocks_acked=subject["blocks_acked"], confirmation=subject["confirmation"])
        self._deliver_if_done(meta)
        return True

    @event("ReceiptRecorded")
    def _receipt_recorded(self, meta: dict, digest: str, seq: int, outcome: str, bytes_sent: int,
                          intervals: list[list[int]], sessions: int, first_byte_ms: int, last_byte_ms: int,
                          blocks_acked: int, confirmation: str | None) -> None:
        self.receipts[digest] = {"seq": seq, "outcome": outcome, "bytes_sent": bytes_sent, "intervals": intervals,
                                 "sessions": sessions, "first_byte_ms": first_byte_ms, "last_byte_ms": last_byte_ms,
                                 "blocks_acked": blocks_acked, "confirmation": confirmation}
        latest = self.receipts.get(self.latest_receipt)
        if latest is None or seq > latest["seq"]:
            self.latest_receipt = digest

    def record_confirmation(self, meta: dict, confirmation_vc: Any) -> bool:
        """Record the buyer's delivery confirmation, signed by the token's ``cnf`` key.

        Idempotent per confirmation digest (False when already recorded). Records
        ``Delivered`` when a recorded complete receipt names this confirmation.

        Raises:
            ConfirmationWrongSigner: signed by another key than the token's ``cnf`` key.
            ReceiptInvalid: malformed, or its proof does not verify.
            ReceiptWrongToken: about another purchase, token, device or object.
        """
        if isinstance(confirmation_vc, dict) and _thumbprint_of(confirmation_vc.get("issuer")) not in (
                None, self.cnf_jkt):
            raise ConfirmationWrongSigner("the confirmation is signed by another key than the token's cnf key")
        subject = verify_confirmation(confirmation_vc, cnf_jkt=self.cnf_jkt)
        self._check_about_token(subject)
        confirmation_digest = digest(confirmation_vc)
        if confirmation_digest in self.confirmations:
            return False
        self._confirmation_recorded(meta=meta, digest=confirmation_digest, session=subject["session"],
                                    blocks_verified=subject["blocks_verified"],
                                    received_at_ms=subject["received_at_ms"])
        self._deliver_if_done(meta)
        return True

    @event("ConfirmationRecorded")
    def _confirmation_recorded(self, meta: dict, digest: str, session: str, blocks_verified: int,
                               received_at_ms: int) -> None:
        self.confirmations[digest] = {"session": session, "blocks_verified": blocks_verified,
                                      "received_at_ms": received_at_ms}

    def _check_about_token(self, subject: dict[str, Any]) -> None:
        try:
            check_against_token(subject, self.delivery_claims())
        except ReceiptInvalid as exc:
            raise ReceiptWrongToken(exc.detail) from None

    def _deliver_if_done(self, meta: dict) -> None:
        if self.delivered is not None:
            return
        claims = token_claims(self.token)
        whole = [[0, claims["size_bytes"]]] if claims["size_bytes"] else []
        for receipt_digest, receipt in self.receipts.items():
            confirmation = self.confirmations.get(receipt["confirmation"] or "")
            if (receipt["outcome"] == "complete" and confirmation is not None and receipt["intervals"] == whole
                    and confirmation["blocks_verified"] == claims["blocks"]["count"]):
                self._delivered(meta=meta, receipt=receipt_digest, confirmation=receipt["confirmation"],
                                delivered_at_ms=receipt["last_byte_ms"])
                return

    @event("Delivered")
    def _delivered(self, meta: dict, receipt: str, confirmation: str, delivered_at_ms: int) -> None:
        self.delivered = {"receipt": receipt, "confirmation": confirmation, "delivered_at_ms": delivered_at_ms}

    # -- expiry and revocation (the hub's side) ----------------------------------------------
    def expire(self, meta: dict, *, now_s: int, skew_s: int = CLOCK_SKEW_S) -> bool:
        """Record ``TokenExpired`` if a deadline passed (beyond the clock skew nodes allow):
        ``start_by`` with no redemption, or ``exp`` with no delivery. False if nothing is due."""
        if self.delivered is not None or self.revoked is not None:
            return False
        reason = (self.expired or {}).get("reason", "")
        if self.redemption is None:
            if reason or now_s <= self.start_by_s + skew_s:
                return False
            self._token_expired(meta=meta, reason="not_started", at_s=now_s)
            return True
        if reason == "not_delivered" or now_s <= self.expires_at_s + skew_s:
            return False
        self._token_expired(meta=meta, reason="not_delivered", at_s=now_s)
        return True

    @event("TokenExpired")
    def _token_expired(self, meta: dict, reason: str, at_s: int) -> None:
        self.expired = {"reason": reason, "at_s": at_s}

    def revoke(self, meta: dict, *, by: str, reason: str, now_s: int) -> bool:
        """Withdraw a token nobody redeemed yet; False if it was already revoked.

        Raises:
            PurchaseNotRevocable: the token was redeemed, delivered or expired.
            InvalidInput: the reason is not a string of at most 200 characters.
        """
        if self.revoked is not None:
            return False
        if self.status != "issued":
            raise PurchaseNotRevocable(f"the token is {self.status}; only an issued token can be revoked")
        if not isinstance(reason, str) or len(reason) > REVOKE_REASON_CHARS_MAX:
            raise InvalidInput(f"reason must be at most {REVOKE_REASON_CHARS_MAX} characters", param="reason")
        self._token_revoked(meta=meta, by=by, reason=reason, at_s=now_s)
        return True

    @event("TokenRevoked")
    def _token_revoked(self, meta: dict, by: str, reason: str, at_s: int) -> None:
        self.revoked = {"by": by, "reason": reason, "at_s": at_s}

    # -- views --------------------------------------------------------------------------------
    def to_public(self, *, with_token: bool = False) -> dict[str, Any]:
        """The purchase as its buyer, seller or an auditor sees it; the token string itself
        only ``with_token`` (the buyer)."""
        claims = token_claims(self.token)
        latest = self.receipts.get(self.latest_receipt)
        view: dict[str, Any] = {
            "id": str(self.id), "status": self.status, "listing_id": self.listing_id,
            "listing_version": self.listing_version, "buyer_account_id": self.buyer_account_id,
            "seller_account_id": self.seller_account_id, "seller_device_id": self.seller_device_id,
            "channel_id": self.channel_id, "price_minor": self.price_minor, "fee_minor": self.fee_minor,
            "seller_net_minor": self.price_minor - self.fee_minor, "currency": self.currency,
            "token": {
                "jti": self.jti, "kid": self.kid, "cnf_jkt": self.cnf_jkt, "issued_at_s": self.issued_at_s,
                "start_by_s": self.start_by_s, "expires_at_s": self.expires_at_s,
                "redeemed_at_ms": (self.redemption or {}).get("redeemed_at_ms"),
                "expired_at_s": (self.expired or {}).get("at_s"), "expired_reason": (self.expired or {}).get("reason"),
                "revoked_at_s": (self.revoked or {}).get("at_s"), "revoked_reason": (self.revoked or {}).get("reason"),
            },
            "object": {"content_hash": claims["content_hash"], "size_bytes": claims["size_bytes"],
                       "blocks": claims["blocks"], "endpoint": claims.get("endpoint")},
            "receipts": {"count": len(self.receipts),
                         "latest": None if latest is None else {k: v for k, v in latest.items() if k != "intervals"}},
            "confirmations": {"count": len(self.confirmations)},
            "delivered_at_ms": (self.delivered or {}).get("delivered_at_ms"),
        }
        if with_token:
            view["delivery_token"] = self.token
        return view


def _thumbprint_of(issuer: Any) -> str | None:
    """The RFC 7638 thumbprint of a ``did:key`` issuer; None when it is not one (the
    credential check then refuses it as malformed)."""
    try:
        return jwk_thumbprint(VerifyKey.from_did_key(issuer))
    except InvalidInput:
        return None
