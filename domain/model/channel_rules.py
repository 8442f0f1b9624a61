"""The channel's arithmetic and rules, as pure functions of its state (``domain.model.channel``).

The fee rule (``fee_for``, ``debit_fee``), what a settlement pays (``settlement_split``), how a
card refund is spread over the PaymentIntents that funded the channel (``card_refund_plan``),
the money invariants checked after every command (``check_invariants``) and the public view.
They read a ``Channel`` and change nothing, so the aggregate keeps only its commands and
events; the aggregate's methods of the same names call these.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from uuid import UUID

from domain.model.errors import InvalidState
from domain.model.ledger import LedgerInvariantViolated
from domain.model.money import BPS_DENOMINATOR

if TYPE_CHECKING:
    from domain.model.channel import Channel

STRIPE_REF_PREFIX = "stripe:"  # a card funding_ref is "stripe:<payment intent id>"
_REFUND_KEY = re.compile(r"rf_([0-9a-f]{32})_(pi_[A-Za-z0-9]+)")


def card_refund_key(channel_id: UUID, payment_intent_id: str) -> str:
    """The Stripe ``Idempotency-Key`` (and ``metadata.refund_key``) of one planned refund."""
    return f"rf_{channel_id.hex}_{payment_intent_id}"


def parse_card_refund_key(key: object) -> tuple[UUID, str] | None:
    """``(channel id, payment intent id)`` of a key made by :func:`card_refund_key`, else None."""
    match = _REFUND_KEY.fullmatch(key) if isinstance(key, str) else None
    return (UUID(match[1]), match[2]) if match else None


def fee_for(amount_minor: int, fee_bps: int) -> int:
    """``floor(amount * fee_bps / 10000)``: the fee on a cumulative amount (the contract's bound)."""
    return amount_minor * fee_bps // BPS_DENOMINATOR


def debit_fee(spent_before_minor: int, amount_minor: int, fee_bps: int) -> int:
    """One debit's fee: what it adds to the fee on the channel's cumulative spend.

    ``fee_for(before + amount) - fee_for(before)``: the fees of a channel's debits sum to
    ``fee_for(spent)`` exactly, so 1-unit debits at 5 % pay 1 unit every 20th debit instead of
    never. Always within ``0..amount`` (one unit at most above the debit's own share).
    """
    return fee_for(spent_before_minor + amount_minor, fee_bps) - fee_for(spent_before_minor, fee_bps)


def settlement_split(channel: Channel) -> dict[str, Any]:
    """What a settlement pays: the latest voucher (chain) or the spend (card), split.

    When the buyer signed less than was charged (only with an unsigned allowance), the
    fee and sellers' shares are cut back to fit the signed amount, sellers in id order.
    """
    cumulative = channel.voucher_minor if channel.rail == "chain" else channel.spent_minor
    fee = min(channel.fee_minor, fee_for(cumulative, channel.fee_bps))
    left = cumulative - fee
    paid: dict[str, int] = {}
    for seller in sorted(channel.sellers):
        share = min(channel.sellers[seller]["net_minor"], left)
        paid[seller] = share
        left -= share
    if left:
        raise LedgerInvariantViolated("settlement split does not cover the voucher")
    net = {s: channel.sellers[s]["net_minor"] for s in paid}
    reversed_ = {s: net[s] - a for s, a in paid.items() if net[s] > a}
    return {"cumulative_minor": cumulative, "fee_minor": fee, "seller_amounts": paid,
            "seller_reversed": reversed_, "fee_reversed_minor": channel.fee_minor - fee,
            "refund_minor": channel.deposit_minor - cumulative}


def card_refund_plan(channel: Channel) -> list[dict[str, Any]]:
    """How ``refunded_minor`` goes back to the buyer's card: one entry per PaymentIntent.

    Newest intent first: the most recent charge is the furthest from the card network's
    refund time limit, and fewer, larger refunds cost the buyer fewer statement lines.
    Each intent gives back at most what it paid in. Each entry carries the Stripe
    ``Idempotency-Key`` of its refund, derived from the channel and the intent only, so
    every retry of that refund sends the same key. Empty unless a settled card channel.

    Raises:
        InvalidState: a funding is not a PaymentIntent, or its amount is unknown (a
            channel snapshotted before amounts were kept): an operator refunds by hand.
    """
    if channel.rail != "card" or channel.status != "settled":
        return []
    left = channel.refunded_minor
    plan: list[dict[str, Any]] = []
    for ref in reversed(channel.funding_refs):
        if left == 0:
            break
        funded = channel.funding_minor.get(ref)
        if not ref.startswith(STRIPE_REF_PREFIX) or funded is None:
            raise InvalidState(f"channel {channel.id}: funding {ref!r} cannot be refunded automatically")
        intent_id = ref.removeprefix(STRIPE_REF_PREFIX)
        amount = min(funded, left)
        plan.append({"payment_intent_id": intent_id, "amount_minor": amount,
                     "refund_key": card_refund_key(channel.id, intent_id)})
        left -= amount
    if left:
        raise LedgerInvariantViolated(f"channel {channel.id}: refund exceeds what its payments funded")
    return plan


def check_invariants(channel: Channel) -> None:
    """Assert the money rules; a failure is a bug (raised, never swallowed)."""
    c = channel
    if not 0 <= c.spent_minor <= c.deposit_minor:
        raise LedgerInvariantViolated(f"channel {c.id} spent {c.spent_minor} of {c.deposit_minor}")
    held = c.held_minor
    if held != sum(h["amount_minor"] for h in c.holds.values()) or held < 0:
        raise LedgerInvariantViolated(f"channel {c.id}: held {held} is not the sum of its holds")
    if c.spent_minor + held > c.deposit_minor:
        raise LedgerInvariantViolated(f"channel {c.id}: spent {c.spent_minor} + held {held} above the deposit")
    if c.holds and c.status == "settled":
        raise LedgerInvariantViolated(f"channel {c.id}: settled with open holds")
    if sum(s["net_minor"] + s["fee_minor"] for s in c.sellers.values()) != c.spent_minor:
        raise LedgerInvariantViolated(f"channel {c.id} seller shares do not add up to the spend")
    if c.fee_minor * BPS_DENOMINATOR > c.spent_minor * c.fee_bps:
        raise LedgerInvariantViolated(f"channel {c.id} fees above the rate")
    if c.rail == "chain":
        if not c.settled_minor <= c.voucher_minor <= c.deposit_minor:
            raise LedgerInvariantViolated(f"channel {c.id}: settled <= voucher <= deposit broken")
        if c.spent_minor + held - c.voucher_minor > c.unsigned_allowance_minor:
            raise LedgerInvariantViolated(f"channel {c.id}: unsigned exposure above the allowance")
    if c.status == "settled" and c.settled_minor + c.refunded_minor != c.deposit_minor:
        raise LedgerInvariantViolated(f"channel {c.id}: settlement + refund != deposit")
    if sum(c.funding_minor.values()) > c.deposit_minor:
        raise LedgerInvariantViolated(f"channel {c.id}: fundings above the deposit")
    if c.card_refunds:
        _check_card_refunds(c)


def _check_card_refunds(c: Channel) -> None:
    if c.rail != "card" or c.status != "settled":
        raise LedgerInvariantViolated(f"channel {c.id}: card refund on a {c.rail} {c.status} channel")
    if sum(r["amount_minor"] for r in c.card_refunds.values()) > c.refunded_minor:
        raise LedgerInvariantViolated(f"channel {c.id}: card refunds above the refund")
    for intent_id, refund in c.card_refunds.items():
        if refund["amount_minor"] > c.funding_minor.get(STRIPE_REF_PREFIX + intent_id, 0):
            raise LedgerInvariantViolated(f"channel {c.id}: {intent_id} refunded above what it paid")


def channel_public(c: Channel) -> dict[str, Any]:
    """The channel as the API shows it to its buyer."""
    return {
        "id": str(c.id), "buyer_account_id": c.buyer_account_id, "currency": c.currency,
        "rail": c.rail, "status": c.status, "deposit_minor": c.deposit_minor,
        "spent_minor": c.spent_minor, "remaining_minor": c.available_minor, "held_minor": c.held_minor,
        "holds": len(c.holds),
        "fee_bps": c.fee_bps, "fee_minor": c.fee_minor, "expiry_s": c.expiry_s,
        "voucher_minor": c.voucher_minor, "unsigned_allowance_minor": c.unsigned_allowance_minor,
        "buyer_wallet": c.buyer_wallet or None, "chain_channel_id": c.chain_channel_id or None,
        "settled_minor": c.settled_minor, "refunded_minor": c.refunded_minor,
        "settlement_ref": c.settlement_ref or None, "debits": c.debit_count,
        "card_refunds": [{"payment_intent_id": pi, "amount_minor": r["amount_minor"], "status": r["status"],
                          "stripe_refund_id": r["stripe_refund_id"] or None}
                         for pi, r in c.card_refunds.items()],
    }
