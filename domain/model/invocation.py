"""Invocation: one metered compute session, the hub's side: the hold, the invoke token, the capture.

An invocation is opened in the same save as the channel's ``HoldPlaced`` (``domain.app.invocations``),
so a session exists exactly when its budget is reserved. Its ``Opened`` event carries the
hub-signed invoke token (``domain.model.invoke``), so a retry under the same Idempotency-Key
replays the same invocation and the same token.

What the seller's node reports (through its outbox, ``docs/protocol.md`` "Durability and the
compute outbox") is recorded from facts the hub checks itself:

* ``Bound``: the node bound the token's ``jti`` to the buyer's ``cnf`` key (``record_bound``);
* ``Captured``: the session's final receipt, signed by the seller device, verified against the
  token's claims, and the buyer's last countersignature; the captured amount is
  ``invoke.settle`` (capped at the countersigned amount plus one call per concurrent slot, and
  at the budget), the rest of the hold is released (``record_final``);
* ``RejectionRecorded``: a safety rejection signed by the device; costs nothing (``record_rejection``);
* ``Lapsed``: no final report by ``lapse_at_s`` (the token's ``exp`` plus the report grace):
  the whole hold goes back (``lapse``).

``status``: ``open`` (token issued), ``bound``, ``captured``, ``lapsed``. A final receipt after a
lapse is refused (the hold is gone); a second final after the capture is a duplicate.

Pure: times come in as arguments; no I/O, clock or randomness.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.errors import (
    InvalidState,
    InvokeCountersignatureInvalid,
    InvokeReceiptInvalid,
    InvokeReceiptReplayed,
)
from domain.model.ids import NS_PLATFORM, natural_id
from domain.model.invoke import InvokeClaims, Settlement, settle, stored_claims
from domain.model.invoke_receipts import digest, verify_countersignature, verify_receipt, verify_rejection
from domain.model.keys import VerifyKey
from domain.model.purchase import check_binding

NS_INVOCATION = natural_id(NS_PLATFORM, "invocation")
STATUSES = ("open", "bound", "captured", "lapsed")
REJECTIONS_KEPT = 1000  # digests remembered for idempotency (the node sends one a minute per rule at most)


def invocation_id_for(buyer_account_id: str, idempotency_key: str) -> UUID:
    """The invocation id of a buyer's request: a retry under the same key lands on the same id."""
    return natural_id(NS_INVOCATION, f"{buyer_account_id}\n{idempotency_key}")


class Invocation(MarketAggregate):
    """A metered session: who invokes which listing version at which device, for what budget."""

    @event("Opened")
    def __init__(
        self, id: UUID, meta: dict, buyer_account_id: str, seller_account_id: str, seller_device_id: str,
        listing_id: str, listing_version: int, channel_id: str, unit: str, unit_price_minor: int, currency: str,
        budget_minor: int, max_call_units: int, max_concurrency: int, idempotency_key: str, request_hash: str,
        token: str, kid: str, jti: str, cnf_jkt: str, issued_at_s: int, start_by_s: int, expires_at_s: int,
        lapse_at_s: int,
    ) -> None:
        self.buyer_account_id = buyer_account_id
        self.seller_account_id = seller_account_id
        self.seller_device_id = seller_device_id
        self.listing_id = listing_id
        self.listing_version = listing_version
        self.channel_id = channel_id
        self.unit = unit
        self.unit_price_minor = unit_price_minor
        self.currency = currency
        self.budget_minor = budget_minor
        self.max_call_units = max_call_units
        self.max_concurrency = max_concurrency
        self.idempotency_key = idempotency_key
        self.request_hash = request_hash
        self.token = token
        self.kid = kid
        self.jti = jti
        self.cnf_jkt = cnf_jkt
        self.issued_at_s = issued_at_s
        self.start_by_s = start_by_s
        self.expires_at_s = expires_at_s
        self.lapse_at_s = lapse_at_s
        self.bound: dict[str, Any] | None = None  # {"jti", "device_id", "buyer_jkt", "bound_at_ms"}
        self.final: dict[str, Any] | None = None  # the capture: receipt digest, amounts
        self.lapsed: dict[str, Any] | None = None  # {"at_s"}
        self.rejections: dict[str, dict[str, Any]] = {}  # digest -> {"rule", "code", "at_ms"}, newest last
        self.rejection_count = 0

    # -- reading ----------------------------------------------------------------------------
    @property
    def status(self) -> str:
        if self.final is not None:
            return "captured"
        if self.lapsed is not None:
            return "lapsed"
        return "bound" if self.bound is not None else "open"

    @property
    def ended(self) -> bool:
        return self.final is not None or self.lapsed is not None

    def replays(self, request_hash: str) -> bool:
        """Whether a request under this invocation's Idempotency-Key is the same request."""
        return request_hash == self.request_hash

    def claims(self, device_key: VerifyKey | None = None) -> InvokeClaims:
        """The token's claims (issued and checked by this hub). ``device_key``: the seller
        device's key as the hub holds it now (rotation grace included), which receipts and
        rejections must verify under instead of the key the token named at issue."""
        claims = stored_claims(self.token)
        if device_key is None:
            return claims
        return InvokeClaims(claims.raw, claims.token, claims.kid, device_key, claims.seller_kx_key)

    # -- the node's reports -----------------------------------------------------------------
    def record_bound(self, meta: dict, *, jti: str, device_id: str, buyer_jkt: str, bound_at_ms: int) -> bool:
        """Record that the seller's node bound the token to the buyer's key (its first connection).

        Idempotent: a second report records nothing and returns False. Recorded after a
        capture or a lapse too (it happened; the node's report may come late).

        Raises:
            RedemptionWrongToken: ``jti`` is not this invocation's token.
            RedemptionWrongDevice: ``device_id`` is not the token's audience.
            RedemptionKeyMismatch: ``buyer_jkt`` is not the token's ``cnf`` thumbprint.
            InvalidInput: ``bound_at_ms`` is not epoch milliseconds.
        """
        check_binding(self, jti=jti, device_id=device_id, buyer_jkt=buyer_jkt, at_ms=bound_at_ms, report="binding",
                      params=("jkt", "bound_at_ms"))
        if self.bound is not None:
            return False
        self._bound(meta=meta, jti=jti, device_id=device_id, buyer_jkt=buyer_jkt, bound_at_ms=bound_at_ms)
        return True

    @event("Bound")
    def _bound(self, meta: dict, jti: str, device_id: str, buyer_jkt: str, bound_at_ms: int) -> None:
        self.bound = {"jti": jti, "device_id": device_id, "buyer_jkt": buyer_jkt, "bound_at_ms": bound_at_ms}

    def record_final(self, meta: dict, receipt_vc: Any, countersignature_vc: Any | None, *, device_key: VerifyKey,
                     fee_of: Callable[[int], int] | None = None) -> Settlement | None:
        """Verify the session's final receipt and the buyer's last countersignature; record the
        capture and return how the hold splits. None when this final was captured already.

        ``fee_of(captured_minor)``: the fee the channel's capture will charge (the caller
        computes it from the channel; recorded for the views).

        Raises (the receipt's, in ``verify_receipt``'s order): InvokeReceiptInvalid (shape,
        arithmetic, or not a final receipt), InvokeReceiptTampered (not signed by ``device_key``),
        InvokeUnitPriceChanged, InvokeReceiptReplayed (another session; or another final after
        the capture), InvokeOverBudget; InvokeCountersignatureInvalid; InvalidState (lapsed:
        the hold was released).
        """
        receipt_digest = digest(receipt_vc) if isinstance(receipt_vc, dict) else ""
        if self.final is not None:
            if receipt_digest == self.final["receipt"]:
                return None
            raise InvokeReceiptReplayed("this session's final receipt was captured already; this is another one")
        if self.lapsed is not None:
            raise InvalidState("the session lapsed without a final report; its hold was released")
        claims = self.claims(device_key)
        subject = verify_receipt(receipt_vc, claims)
        if not subject["final"]:
            raise InvokeReceiptInvalid("the capture needs the session's final receipt (final: true)")
        countersigned = 0
        if countersignature_vc is not None:
            signed = verify_countersignature(countersignature_vc, claims)
            if signed["seq"] > subject["seq"] or signed["cumulative_amount_minor"] > subject["cumulative_amount_minor"]:
                raise InvokeCountersignatureInvalid("the countersignature is ahead of the final receipt")
            countersigned = signed["cumulative_amount_minor"]
        split = settle(claims, final_cumulative_minor=subject["cumulative_amount_minor"],
                       countersigned_minor=countersigned)
        fee = fee_of(split.captured_minor) if fee_of is not None and split.captured_minor else 0
        self._captured(meta=meta, receipt=receipt_digest, seq=subject["seq"],
                       final_cumulative_minor=subject["cumulative_amount_minor"],
                       cumulative_units=subject["cumulative_units"], countersigned_minor=countersigned,
                       captured_minor=split.captured_minor, released_minor=split.released_minor, fee_minor=fee,
                       end_reason=subject["end_reason"])
        return split

    @event("Captured")
    def _captured(self, meta: dict, receipt: str, seq: int, final_cumulative_minor: int, cumulative_units: int,
                  countersigned_minor: int, captured_minor: int, released_minor: int, fee_minor: int,
                  end_reason: str) -> None:
        self.final = {"receipt": receipt, "seq": seq, "final_cumulative_minor": final_cumulative_minor,
                      "cumulative_units": cumulative_units, "countersigned_minor": countersigned_minor,
                      "captured_minor": captured_minor, "released_minor": released_minor, "fee_minor": fee_minor,
                      "end_reason": end_reason}

    def record_rejection(self, meta: dict, rejection_vc: Any, *, device_key: VerifyKey) -> bool:
        """Record a safety rejection signed by the seller device for this session (it costs
        nothing; trust reads it as a behaviour signal). False if already recorded.

        Raises:
            InvokeReceiptInvalid / InvokeReceiptTampered: malformed, or not signed by ``device_key``.
            InvokeReceiptReplayed: for another session.
        """
        subject = verify_rejection(rejection_vc, self.claims(device_key))
        rejection_digest = digest(rejection_vc)
        if rejection_digest in self.rejections:
            return False
        self._rejection_recorded(meta=meta, digest=rejection_digest, rule=subject["rule"], code=subject["code"],
                                 at_ms=subject["at_ms"])
        return True

    @event("RejectionRecorded")
    def _rejection_recorded(self, meta: dict, digest: str, rule: str, code: str, at_ms: int) -> None:
        self.rejections[digest] = {"rule": rule, "code": code, "at_ms": at_ms}
        self.rejection_count += 1
        if len(self.rejections) > REJECTIONS_KEPT:
            del self.rejections[next(iter(self.rejections))]

    # -- the hub's side -----------------------------------------------------------------------
    def lapse(self, meta: dict, *, now_s: int) -> bool:
        """Record ``Lapsed`` when no final report came by ``lapse_at_s``; False if not due or ended."""
        if self.ended or now_s < self.lapse_at_s:
            return False
        self._lapsed(meta=meta, at_s=now_s)
        return True

    @event("Lapsed")
    def _lapsed(self, meta: dict, at_s: int) -> None:
        self.lapsed = {"at_s": at_s}

    # -- views --------------------------------------------------------------------------------
    def to_public(self, *, with_token: bool = False) -> dict[str, Any]:
        """The invocation as its buyer, seller or an auditor sees it; the token only ``with_token``."""
        final = self.final or {}
        view: dict[str, Any] = {
            "id": str(self.id), "status": self.status, "listing_id": self.listing_id,
            "listing_version": self.listing_version, "buyer_account_id": self.buyer_account_id,
            "seller_account_id": self.seller_account_id, "seller_device_id": self.seller_device_id,
            "channel_id": self.channel_id, "unit": self.unit, "unit_price_minor": self.unit_price_minor,
            "currency": self.currency, "budget_minor": self.budget_minor, "max_call_units": self.max_call_units,
            "max_concurrency": self.max_concurrency,
            "token": {"jti": self.jti, "kid": self.kid, "cnf_jkt": self.cnf_jkt, "issued_at_s": self.issued_at_s,
                      "start_by_s": self.start_by_s, "expires_at_s": self.expires_at_s,
                      "lapse_at_s": self.lapse_at_s, "bound_at_ms": (self.bound or {}).get("bound_at_ms")},
            "captured_minor": final.get("captured_minor", 0), "fee_minor": final.get("fee_minor", 0),
            "released_minor": final.get("released_minor", self.budget_minor if self.lapsed else 0),
            "final": None if not final else {k: final[k] for k in ("receipt", "seq", "final_cumulative_minor",
                                                                   "cumulative_units", "countersigned_minor",
                                                                   "end_reason")},
            "rejections": self.rejection_count, "lapsed_at_s": (self.lapsed or {}).get("at_s"),
        }
        if with_token:
            view["invoke_token"] = self.token
        return view
