"""Channel: a buyer's prepaid balance that sellers are paid from, debit by debit.

A channel is funded on one rail, fixed at open: ``chain`` (an ERC-20 deposit in the
Channels contract, credited only from the contract's own event) or ``card`` (a Stripe
PaymentIntent, credited only from its verified ``payment_intent.succeeded`` webhook).
The fee (basis points) is snapshotted at open and taken on the channel's cumulative spend:
a debit's fee is what it adds to ``floor(spent * fee_bps / 10000)`` (``debit_fee``), so a
channel's fees always add up to exactly that (micro-debits included) and pass the contract's
check (``fee*10000 <= cumulative*fee_bps``). Each ``Debited`` records its fee; replays never
recompute it (debits recorded under the older per-debit rounding keep theirs).

On chain channels every debit carries the buyer's EIP-712 cumulative voucher (checked by
the caller); the hub refuses a debit that would leave more than ``unsigned_allowance_minor``
charged but not signed for. Idempotency keys live in the channel's own state, so a retried
debit returns the first answer from any host, and another body under the same key is refused.
A key is remembered for ``KEY_RETENTION_S`` (24 h, as card processors do) after its debit;
older keys are dropped as later debits arrive, so the state stays bounded by the debit rate.

Card refunds: ``Refunded`` records what goes back to the buyer; ``card_refund_plan`` splits it
over the PaymentIntents that funded the channel (each gives back at most what it paid in),
and ``CardRefundSent`` / ``CardRefundFailed`` record what Stripe did with each planned part.

Holds (metered compute sessions, ``domain.app.invocations``): ``hold`` reserves an amount for
one invocation (``HoldPlaced``), not a spend; every debit and every new hold must fit
``deposit - spent - held``. ``capture_hold`` ends it: ``HoldReleased`` (what is captured and
what goes back to the available balance), then, when something is captured, the ordinary
``Debited`` (purpose ``invoke``, key ``invoke:<invocation id>``, the fee by ``debit_fee`` as a
sale's), so settlement, balances, the ledger and payouts see a capture as any debit. A hold
holds no money in the ledger (no postings). ``release_hold`` ends a lapsed one. A channel with
open holds may close (no new debits or holds) but does not settle until its last hold ends
(``settle_after_holds``; chain settlement is refused meanwhile, ``channel_holds_open``). On a chain channel a capture is charged
without a voucher, so a hold must also fit the unsigned allowance's headroom
(``spent + held - voucher <= unsigned_allowance_minor``).

The arithmetic and the rules that only read the state (the fee rule, the settlement split,
the card refund plan, the invariants, the public view) are ``domain.model.channel_rules``.

Pure: time comes in as ``now_s``; no I/O inside event methods.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.channel_rules import (
    card_refund_plan,
    channel_public,
    check_invariants,
    debit_fee,
    settlement_split,
)
from domain.model.errors import (
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    UnsignedAllowanceExhausted,
)

MAX_CHAIN_SELLERS = 15  # the contract pays at most 16 payees per settle; one slot spare
KEY_RETENTION_S = 24 * 3600
AMOUNT_MAX_MINOR = 10**18
FAILED_REFUND_STATUSES = ("failed", "canceled")  # Stripe refunds whose money never reaches the card


class Channel(MarketAggregate):
    """One payment channel: deposit, debits, latest voucher, close and settlement."""

    # Version 2 keeps each funding's amount and the card refunds; 3 the holds. Older snapshots are upcast.
    class_version = 3

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A snapshot from before per-funding amounts: known only when one funding made the deposit.

        With several fundings the split is not in the snapshot; ``card_refund_plan`` then
        refuses (an operator refunds by hand) rather than guess how much each intent paid.
        """
        refs = state.get("funding_refs") or []
        state["funding_minor"] = {refs[0]: state["deposit_minor"]} if len(refs) == 1 else {}
        state["card_refunds"] = {}

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        """A snapshot from before holds had none."""
        state["holds"] = {}
        state["held_minor"] = 0

    @event("Opened")
    def __init__(
        self, id: UUID, meta: dict, buyer_account_id: str, currency: str, rail: str,
        deposit_minor: int, funding_ref: str, expiry_s: int, fee_bps: int, unsigned_allowance_minor: int,
        buyer_wallet: str, chain_channel_id: str, opened_at_s: int,
    ) -> None:
        self.buyer_account_id = buyer_account_id
        self.currency = currency
        self.rail = rail
        self.deposit_minor = deposit_minor
        self.expiry_s = expiry_s
        self.fee_bps = fee_bps
        self.unsigned_allowance_minor = unsigned_allowance_minor
        self.buyer_wallet = buyer_wallet
        self.chain_channel_id = chain_channel_id
        self.opened_at_s = opened_at_s
        self.status = "open" if deposit_minor > 0 else "pending"
        self.spent_minor = 0
        self.fee_minor = 0
        self.voucher_minor = 0
        self.voucher_signature = ""
        self.sellers: dict[str, dict[str, int]] = {}  # seller -> {"net_minor", "fee_minor"}
        # Idempotency key -> {"request_hash", "result", "at_s"}, oldest first (insertion order).
        self.debits: dict[str, dict[str, Any]] = {}
        self.debit_count = 0
        self.funding_refs = [funding_ref] if funding_ref else []
        # funding_ref -> amount it paid in (order of arrival is funding_refs' order).
        self.funding_minor: dict[str, int] = {funding_ref: deposit_minor} if funding_ref and deposit_minor else {}
        # payment intent id -> {"amount_minor", "status" (sent | failed | resolved), "stripe_refund_id",
        # "reason" (Stripe's failure, or the operator's reference once resolved)}
        self.card_refunds: dict[str, dict[str, Any]] = {}
        self.settled_minor = 0
        self.refunded_minor = 0
        self.settlement_ref = ""
        self.close_reason = ""
        # invocation id -> {"amount_minor", "seller_account_id", "lapse_at_s", "at_s"}: open holds.
        self.holds: dict[str, dict[str, Any]] = {}
        self.held_minor = 0

    @property
    def available_minor(self) -> int:
        """What a new debit or hold may take: the deposit less the spend and the open holds."""
        return self.deposit_minor - self.spent_minor - self.held_minor

    # -- funding ------------------------------------------------------------------------------
    def top_up(self, meta: dict, *, amount_minor: int, funding_ref: str) -> None:
        """Add funds that the rail proved arrived (the caller checked the proof)."""
        _check_amount(amount_minor)
        if self.status not in ("pending", "open"):
            raise InvalidState(f"channel is {self.status}; it takes no more funds")
        if funding_ref in self.funding_refs:
            return  # the same proof twice changes nothing
        self._topped_up(meta=meta, amount_minor=amount_minor, funding_ref=funding_ref)

    @event("ToppedUp")
    def _topped_up(self, meta: dict, amount_minor: int, funding_ref: str) -> None:
        self.deposit_minor += amount_minor
        self.funding_refs.append(funding_ref)
        self.funding_minor[funding_ref] = amount_minor
        self.status = "open"

    def return_late_payment(self, meta: dict, *, amount_minor: int, funding_ref: str) -> bool:
        """Take in, and give straight back, a card payment that succeeded after the channel
        settled (a top-up paid while the buyer closed). The money did reach the hub, so the
        ledger records it arriving and leaving as a refund; the refund sweep sends it back
        to the same card (it is the newest funding, so the plan refunds it first and whole,
        and the parts planned before it stay as they were). False if already taken in.

        Raises:
            InvalidState: not a settled card channel (a closing one settles first; Stripe
                redelivers the webhook).
        """
        _check_amount(amount_minor)
        if self.rail != "card" or self.status != "settled":
            raise InvalidState(f"channel is {self.status}; it takes no more funds")
        if funding_ref in self.funding_refs:
            return False
        self._late_payment_received(meta=meta, amount_minor=amount_minor, funding_ref=funding_ref)
        self._refunded(meta=meta, amount_minor=amount_minor, refund_ref=funding_ref)
        return True

    @event("LatePaymentReceived")
    def _late_payment_received(self, meta: dict, amount_minor: int, funding_ref: str) -> None:
        self.deposit_minor += amount_minor
        self.funding_refs.append(funding_ref)
        self.funding_minor[funding_ref] = amount_minor

    # -- debits -------------------------------------------------------------------------------
    def replay(self, key: str, request_hash: str) -> dict[str, Any] | None:
        """The first answer for ``key`` if this exact request was seen; None if new."""
        seen = self.debits.get(key)
        if seen is None:
            return None
        if seen["request_hash"] != request_hash:
            raise IdempotencyKeyReused("this Idempotency-Key was used with another request", param="Idempotency-Key")
        return {**seen["result"], "replayed": True}

    def debit(
        self, meta: dict, *, key: str, request_hash: str, amount_minor: int, seller_account_id: str,
        purpose: str, now_s: int, voucher: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Charge ``amount_minor`` to pay ``seller_account_id``; return the debit's answer.

        ``voucher`` (chain channels) is ``{"cumulative_minor", "signature"}`` whose signature
        the caller already verified against the buyer's wallet.
        """
        replayed = self.replay(key, request_hash)
        if replayed is not None:
            return replayed
        _check_amount(amount_minor)
        if self.status != "open":
            raise InvalidState(f"channel is {self.status}; no debits")
        if now_s >= self.expiry_s:
            raise InvalidState("channel has expired; no debits")
        spent_after = self.spent_minor + amount_minor
        if amount_minor > self.available_minor:
            raise InsufficientFunds(
                f"channel has {self.available_minor} minor units available; debit needs {amount_minor}",
                available_minor=self.available_minor)
        if self.rail == "chain":
            self._check_chain_debit(spent_after, seller_account_id, voucher)
            if voucher is not None and voucher["cumulative_minor"] > self.voucher_minor:
                self._voucher_recorded(meta=meta, cumulative_minor=voucher["cumulative_minor"],
                                       signature=voucher["signature"])
        self.trigger_event(self.Debited, meta=meta, amount_minor=amount_minor,
                           fee_minor=debit_fee(self.spent_minor, amount_minor, self.fee_bps),
                           seller_account_id=seller_account_id,
                           purpose=purpose, idempotency_key=key, request_hash=request_hash, at_s=now_s)
        return {**self.debits[key]["result"], "replayed": False}

    def _check_chain_debit(self, spent_after: int, seller: str, voucher: dict[str, Any] | None) -> None:
        signed = self.voucher_minor
        if voucher is not None:
            cumulative = voucher["cumulative_minor"]
            if cumulative < self.voucher_minor:
                raise InvalidInput("voucher is below the latest one the buyer signed", param="voucher")
            # The hub never holds a voucher above what it charged: settling one would pay
            # sellers money they did not earn (or leave it nowhere).
            if cumulative > spent_after:
                raise InvalidInput(f"voucher must not exceed the channel's spend after this debit ({spent_after})",
                                   param="voucher.cumulative_minor")
            signed = cumulative
        if spent_after + self.held_minor - signed > self.unsigned_allowance_minor:
            raise InvalidInput(
                f"a voucher for cumulative {spent_after} is required (unsigned allowance "
                f"{self.unsigned_allowance_minor})", param="voucher", required_cumulative_minor=spent_after)
        if seller not in self.sellers and len(self.sellers) >= MAX_CHAIN_SELLERS:
            raise InvalidState(f"a chain channel pays at most {MAX_CHAIN_SELLERS} sellers")

    @event("VoucherRecorded")
    def _voucher_recorded(self, meta: dict, cumulative_minor: int, signature: str) -> None:
        self.voucher_minor = cumulative_minor
        self.voucher_signature = signature

    class Debited(MarketAggregate.Event):
        """A debit. Declared as a class rather than with ``@event`` (same name, fields and
        stored form): it is the hottest event, and the decorator's argument handling doubled
        its cost (10 -> 5 us)."""

        meta: dict
        amount_minor: int
        fee_minor: int
        seller_account_id: str
        purpose: str
        idempotency_key: str
        request_hash: str
        at_s: int = 0

        def apply(self, aggregate: Channel) -> None:  # type: ignore[override]
            aggregate._debited(self)

    def _debited(self, e: Debited) -> None:
        self.spent_minor += e.amount_minor
        self.fee_minor += e.fee_minor
        seller = self.sellers.setdefault(e.seller_account_id, {"net_minor": 0, "fee_minor": 0})
        seller["net_minor"] += e.amount_minor - e.fee_minor
        seller["fee_minor"] += e.fee_minor
        self.debit_count += 1
        self.debits[e.idempotency_key] = {"request_hash": e.request_hash, "at_s": e.at_s, "result": {
            "channel_id": str(self.id), "sequence": self.debit_count, "amount_minor": e.amount_minor,
            "fee_minor": e.fee_minor, "currency": self.currency, "seller_account_id": e.seller_account_id,
            "purpose": e.purpose, "spent_minor": self.spent_minor,
            "remaining_minor": self.deposit_minor - self.spent_minor - self.held_minor}}
        # Forget keys past the retention window (time from the event, so replays agree).
        for key in list(self._expired_keys(e.at_s - KEY_RETENTION_S)):
            del self.debits[key]

    def _expired_keys(self, before_s: int) -> Any:
        for key, seen in self.debits.items():
            if seen["at_s"] > before_s:
                return
            yield key

    # -- holds (metered compute sessions) -----------------------------------------------------
    def hold(self, meta: dict, *, invocation_id: str, amount_minor: int, now_s: int, lapse_at_s: int,
             seller_account_id: str = "") -> bool:
        """Reserve ``amount_minor`` for one invocation until it is captured or lapses.

        ``lapse_at_s``: when the hub may release it unused (the session's deadline plus the
        report grace); it must come before the channel expires. False if this invocation
        already holds (a retry changes nothing).

        Raises:
            InvalidState: the channel is not open, has expired, or would expire before the hold lapses.
            InsufficientFunds: more than ``deposit - spent - held`` (``available_minor``).
            UnsignedAllowanceExhausted: chain: above the unsigned allowance's headroom.
        """
        if invocation_id in self.holds:
            return False
        _check_amount(amount_minor)
        if self.status != "open":
            raise InvalidState(f"channel is {self.status}; no holds")
        if now_s >= self.expiry_s:
            raise InvalidState("channel has expired; no holds")
        if type(lapse_at_s) is not int or not now_s < lapse_at_s <= self.expiry_s:
            raise InvalidState("the hold would outlive the channel", param="channel_id")
        if amount_minor > self.available_minor:
            raise InsufficientFunds(
                f"channel has {self.available_minor} minor units available; the hold needs {amount_minor}",
                available_minor=self.available_minor)
        if self.rail == "chain":
            headroom = self.unsigned_allowance_minor - (self.spent_minor + self.held_minor - self.voucher_minor)
            if amount_minor > headroom:
                raise UnsignedAllowanceExhausted(
                    f"a capture is charged without a voucher: the unsigned allowance has {max(0, headroom)} "
                    f"minor units of headroom; the hold needs {amount_minor}", available_minor=max(0, headroom))
            payees = set(self.sellers) | {h["seller_account_id"] for h in self.holds.values()} | {seller_account_id}
            if len(payees) > MAX_CHAIN_SELLERS:
                raise InvalidState(f"a chain channel pays at most {MAX_CHAIN_SELLERS} sellers")
        self._hold_placed(meta=meta, invocation_id=invocation_id, amount_minor=amount_minor,
                          seller_account_id=seller_account_id, lapse_at_s=lapse_at_s, at_s=now_s)
        return True

    @event("HoldPlaced")
    def _hold_placed(self, meta: dict, invocation_id: str, amount_minor: int, seller_account_id: str,
                     lapse_at_s: int, at_s: int) -> None:
        self.holds[invocation_id] = {"amount_minor": amount_minor, "seller_account_id": seller_account_id,
                                     "lapse_at_s": lapse_at_s, "at_s": at_s}
        self.held_minor += amount_minor

    def capture_hold(self, meta: dict, *, invocation_id: str, amount_minor: int, seller_account_id: str,
                     now_s: int) -> dict[str, Any] | None:
        """End a hold by charging ``amount_minor`` of it (0..the hold) to pay the seller; the
        rest goes back to the available balance. Returns the debit's answer (None when nothing
        was captured, or the hold had ended already: a second capture changes nothing).

        Allowed while the channel is open or closing (the hold was reserved before the close),
        and after its expiry (a hold lapses before it; the channel cannot settle while it is open).
        """
        key = f"invoke:{invocation_id}"
        held = self.holds.get(invocation_id)
        if held is None:
            seen = self.debits.get(key)
            return None if seen is None else {**seen["result"], "replayed": True}
        if type(amount_minor) is not int or not 0 <= amount_minor <= held["amount_minor"]:
            raise InvalidInput(f"a capture is 0..{held['amount_minor']} (the hold)", param="amount_minor")
        self._hold_released(meta=meta, invocation_id=invocation_id, captured_minor=amount_minor,
                            released_minor=held["amount_minor"] - amount_minor, reason="captured", at_s=now_s)
        if amount_minor == 0:
            return None
        if self.rail == "chain":
            self._check_chain_debit(self.spent_minor + amount_minor, seller_account_id, None)
        request_hash = f"invoke:{invocation_id}:{amount_minor}"
        self.trigger_event(self.Debited, meta=meta, amount_minor=amount_minor,
                           fee_minor=debit_fee(self.spent_minor, amount_minor, self.fee_bps),
                           seller_account_id=seller_account_id, purpose="invoke", idempotency_key=key,
                           request_hash=request_hash, at_s=now_s)
        return {**self.debits[key]["result"], "replayed": False}

    def release_hold(self, meta: dict, *, invocation_id: str, now_s: int, reason: str = "lapsed") -> bool:
        """End a hold with nothing charged (the session lapsed: no final report in time).
        False if it had ended already."""
        held = self.holds.get(invocation_id)
        if held is None:
            return False
        self._hold_released(meta=meta, invocation_id=invocation_id, captured_minor=0,
                            released_minor=held["amount_minor"], reason=reason, at_s=now_s)
        return True

    @event("HoldReleased")
    def _hold_released(self, meta: dict, invocation_id: str, captured_minor: int, released_minor: int,
                       reason: str, at_s: int) -> None:
        held = self.holds.pop(invocation_id)
        self.held_minor -= held["amount_minor"]

    # -- close, expiry, settlement ------------------------------------------------------------
    def request_close(self, meta: dict, *, now_s: int, reason: str = "requested") -> bool:
        """Stop debits and ask for settlement; False if it was already closing or done."""
        if self.status in ("closing", "settled"):
            return False
        if reason == "expired":
            self._expired(meta=meta, at_s=now_s)
        else:
            self._close_requested(meta=meta, at_s=now_s, reason=reason)
        return True

    @event("CloseRequested")
    def _close_requested(self, meta: dict, at_s: int, reason: str) -> None:
        self.status = "closing"
        self.close_reason = reason

    @event("Expired")
    def _expired(self, meta: dict, at_s: int) -> None:
        self.status = "closing"
        self.close_reason = "expired"

    def settlement_split(self) -> dict[str, Any]:
        """What a settlement pays (``channel_rules.settlement_split``)."""
        return settlement_split(self)

    def settle(self, meta: dict, *, settlement_ref: str) -> bool:
        """Record the settlement (confirmed on chain, or internal for card) and the refund.

        True when it settled now; False when already settled, or while holds are open: a
        capture still to come changes the split, so the settlement waits for the last hold
        to end (``settle_after_holds``). Chain settlement is refused before that
        (``SettlementService.request_settlement``: ``channel_holds_open``).
        """
        if self.status == "settled":
            return False
        if self.status != "closing":
            raise InvalidState("close the channel before settling it")
        if self.holds:
            return False
        split = self.settlement_split()
        self._settled(meta=meta, settlement_ref=settlement_ref, **split)
        if split["refund_minor"]:
            self._refunded(meta=meta, amount_minor=split["refund_minor"], refund_ref=settlement_ref)
        return True

    def settle_after_holds(self, meta: dict) -> bool:
        """Settle a closing channel whose last hold just ended, if it settles internally (card,
        or chain with nothing signed, as a close does); a chain channel with a voucher is
        left to the settlement sweep. True if it settled."""
        if self.status != "closing" or self.holds or (self.rail == "chain" and self.voucher_minor):
            return False
        return self.settle(meta, settlement_ref="internal")

    @event("Settled")
    def _settled(
        self, meta: dict, settlement_ref: str, cumulative_minor: int, fee_minor: int,
        seller_amounts: dict[str, int], seller_reversed: dict[str, int], fee_reversed_minor: int, refund_minor: int,
    ) -> None:
        self.status = "settled"
        self.settled_minor = cumulative_minor
        self.settlement_ref = settlement_ref

    @event("Refunded")
    def _refunded(self, meta: dict, amount_minor: int, refund_ref: str) -> None:
        self.refunded_minor += amount_minor

    # -- card refunds (the Stripe side of Refunded) -------------------------------------------
    def card_refund_plan(self) -> list[dict[str, Any]]:
        """How the refund goes back to the buyer's card (``channel_rules.card_refund_plan``)."""
        return card_refund_plan(self)

    def card_refunds_pending(self) -> list[dict[str, Any]]:
        """The planned refunds with no outcome recorded yet (each intent is refunded once)."""
        return [p for p in self.card_refund_plan() if p["payment_intent_id"] not in self.card_refunds]

    def mark_card_refund_sent(self, meta: dict, payment_intent_id: str, stripe_refund_id: str) -> bool:
        """Record Stripe's refund of a planned part; False if its outcome was already recorded."""
        planned = self._planned_refund(payment_intent_id)
        if planned is None:
            return False
        self._card_refund_sent(meta=meta, payment_intent_id=payment_intent_id,
                               amount_minor=planned["amount_minor"], stripe_refund_id=stripe_refund_id)
        return True

    def mark_card_refund_failed(self, meta: dict, payment_intent_id: str, reason: str,
                                stripe_refund_id: str = "") -> bool:
        """Record Stripe's permanent refusal of a planned part (left for an operator);
        ``stripe_refund_id`` when Stripe made the refund but answered it failed."""
        planned = self._planned_refund(payment_intent_id)
        if planned is None:
            return False
        self._card_refund_failed(meta=meta, payment_intent_id=payment_intent_id,
                                 amount_minor=planned["amount_minor"], reason=reason[:300],
                                 stripe_refund_id=stripe_refund_id)
        return True

    def mark_card_refund_failed_later(self, meta: dict, payment_intent_id: str, stripe_refund_id: str,
                                      reason: str) -> bool:
        """Record that Stripe failed a refund after accepting it (``refund.failed``: the card
        was closed, say). The money did not reach the buyer, so the hub holds it for them
        again and an operator pays it another way. False if already recorded as failed.

        Raises:
            InvalidState: no such refund is planned, or Stripe names another refund than the
                one recorded for this payment (not ours to act on).
        """
        recorded = self.card_refunds.get(payment_intent_id)
        if recorded is None:  # failed before the worker recorded it sent (it will find it recorded)
            return self.mark_card_refund_failed(meta, payment_intent_id, reason, stripe_refund_id)
        if recorded["status"] in ("failed", "resolved"):  # Stripe redelivers, and sends several types
            return False
        if recorded["stripe_refund_id"] not in ("", stripe_refund_id):
            raise InvalidState(f"refund {stripe_refund_id} is not the one recorded for {payment_intent_id}")
        self._card_refund_failed(meta=meta, payment_intent_id=payment_intent_id,
                                 amount_minor=recorded["amount_minor"], reason=reason[:300],
                                 stripe_refund_id=stripe_refund_id, after_sent=True)
        return True

    def resolve_card_refund(self, meta: dict, payment_intent_id: str, reference: str) -> bool:
        """An operator gave a failed card refund back another way (a bank transfer, a new
        charge reversed by hand): the hub no longer holds it. False if already resolved.

        Raises:
            InvalidInput: an empty or over-long reference (what the operator did, for audit).
            InvalidState: this payment's refund is not failed (nothing to resolve).
        """
        reference = reference.strip() if isinstance(reference, str) else ""
        if not 0 < len(reference) <= 200:
            raise InvalidInput("reference must say how the refund was paid (1-200 characters)", param="reference")
        recorded = self.card_refunds.get(payment_intent_id)
        if recorded is not None and recorded["status"] == "resolved":
            return False
        if recorded is None or recorded["status"] != "failed":
            raise InvalidState(f"the refund of {payment_intent_id} has not failed; there is nothing to resolve")
        self._card_refund_resolved(meta=meta, payment_intent_id=payment_intent_id,
                                   amount_minor=recorded["amount_minor"], reference=reference)
        return True

    def _planned_refund(self, payment_intent_id: str) -> dict[str, Any] | None:
        if payment_intent_id in self.card_refunds:
            return None
        for planned in self.card_refund_plan():
            if planned["payment_intent_id"] == payment_intent_id:
                return planned
        raise InvalidState(f"no card refund is planned for {payment_intent_id}")

    @event("CardRefundSent")
    def _card_refund_sent(self, meta: dict, payment_intent_id: str, amount_minor: int,
                          stripe_refund_id: str = "") -> None:
        self.card_refunds[payment_intent_id] = {"amount_minor": amount_minor, "status": "sent",
                                                "stripe_refund_id": stripe_refund_id, "reason": ""}

    @event("CardRefundFailed")
    def _card_refund_failed(self, meta: dict, payment_intent_id: str, amount_minor: int, reason: str = "",
                            stripe_refund_id: str = "", after_sent: bool = False) -> None:
        # ``after_sent``: Stripe failed a refund we had recorded sent (the refund sweep had
        # already stopped counting it as pending). The ledger reverses the refund either way.
        self.card_refunds[payment_intent_id] = {"amount_minor": amount_minor, "status": "failed",
                                                "stripe_refund_id": stripe_refund_id, "reason": reason}

    @event("CardRefundResolved")
    def _card_refund_resolved(self, meta: dict, payment_intent_id: str, amount_minor: int, reference: str) -> None:
        self.card_refunds[payment_intent_id] = {**self.card_refunds[payment_intent_id], "status": "resolved",
                                                "reason": reference}

    # -- invariants and views -----------------------------------------------------------------
    def check_invariants(self) -> None:
        """Assert the money rules (``channel_rules.check_invariants``); a failure is a bug."""
        check_invariants(self)

    def to_public(self) -> dict[str, Any]:
        return channel_public(self)


def _check_amount(amount_minor: Any) -> None:
    if type(amount_minor) is not int or not 0 < amount_minor <= AMOUNT_MAX_MINOR:
        raise InvalidInput(f"amount_minor must be an integer in 1..{AMOUNT_MAX_MINOR}", param="amount_minor")
