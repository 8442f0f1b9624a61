"""Double-entry posting rules: every money event becomes postings that sum to zero.

Pure code (no I/O). A posting is ``(account, currency, amount_minor)``; a positive amount
raises the account's balance, a negative one lowers it. Outside worlds (the chain, the
card processor) are accounts too (``external:chain``, ``external:stripe``): money that
enters the hub makes them negative, money that leaves makes them less so. Hence, for
every event and every currency, the postings sum to exactly zero.

Accounts:
    ``buyer:<account>:channel:<channel>``  what the buyer still holds in one channel.
    ``seller:<account>:payable``           what the hub owes a seller (per currency).
    ``platform:fees``                      the platform's earned fees.
    ``external:chain`` / ``external:stripe`` the rails money arrives and leaves by.
    ``external:operator``                  paid out by an operator by hand (failed card refunds).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PLATFORM_FEES = "platform:fees"
OPERATOR_PAID = "external:operator"  # money an operator paid out by hand (a failed card refund)
RAILS = ("chain", "card")


class LedgerInvariantViolated(AssertionError):
    """Raised when postings or balances break a ledger invariant (a bug, never user input)."""


@dataclass(frozen=True, slots=True)
class Posting:
    """One leg of a balanced movement."""

    account: str
    currency: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class ChannelRef:
    """What the posting rules need to know about a channel (fixed at open)."""

    channel_id: str
    buyer_account_id: str
    currency: str
    rail: str  # chain | card


def channel_account(ref: ChannelRef) -> str:
    return f"buyer:{ref.buyer_account_id}:channel:{ref.channel_id}"


def seller_payable(seller_account_id: str) -> str:
    return f"seller:{seller_account_id}:payable"


def external(rail: str) -> str:
    if rail not in RAILS:
        raise LedgerInvariantViolated(f"unknown rail {rail!r}")
    return "external:stripe" if rail == "card" else "external:chain"


def funded(ref: ChannelRef, amount_minor: int) -> list[Posting]:
    """A deposit or top-up arrives from the rail into the buyer's channel."""
    return _checked([Posting(external(ref.rail), ref.currency, -amount_minor),
                     Posting(channel_account(ref), ref.currency, amount_minor)])


def debited(ref: ChannelRef, amount_minor: int, fee_minor: int, seller_account_id: str) -> list[Posting]:
    """The buyer pays a seller from the channel; the platform keeps the fee (``0..amount``)."""
    if not 0 <= fee_minor <= amount_minor:
        raise LedgerInvariantViolated(f"debit fee {fee_minor} outside 0..{amount_minor}")
    return _checked([
        Posting(channel_account(ref), ref.currency, -amount_minor),
        Posting(seller_payable(seller_account_id), ref.currency, amount_minor - fee_minor),
        Posting(PLATFORM_FEES, ref.currency, fee_minor),
    ])


def settled(
    ref: ChannelRef, seller_amounts: Mapping[str, int], seller_reversed: Mapping[str, int] | None = None,
    fee_reversed_minor: int = 0,
) -> list[Posting]:
    """Settlement: chain channels pay sellers out on chain (their payable leaves by the rail).

    The platform's fee stays in ``platform:fees`` (its revenue; the contract credits it to
    the fee recipient). Card channels pay sellers by payouts instead, so only a reversal
    can move money here. A reversal (charged but never signed for, possible only with an
    unsigned allowance) moves shares back into the channel, which then refunds them.
    """
    out: list[Posting] = []
    if ref.rail == "chain":
        out.append(Posting(external(ref.rail), ref.currency, sum(seller_amounts.values())))
        out += [Posting(seller_payable(s), ref.currency, -a) for s, a in sorted(seller_amounts.items())]
    reversed_ = dict(seller_reversed or {})
    out += [Posting(seller_payable(s), ref.currency, -a) for s, a in sorted(reversed_.items())]
    out.append(Posting(PLATFORM_FEES, ref.currency, -fee_reversed_minor))
    out.append(Posting(channel_account(ref), ref.currency, sum(reversed_.values()) + fee_reversed_minor))
    return _checked(out)


def refunded(ref: ChannelRef, amount_minor: int) -> list[Posting]:
    """What the buyer did not spend goes back by the rail it came from."""
    return _checked([Posting(channel_account(ref), ref.currency, -amount_minor),
                     Posting(external(ref.rail), ref.currency, amount_minor)])


def card_refund_reversed(ref: ChannelRef, amount_minor: int) -> list[Posting]:
    """Stripe refused a card refund for good: the hub still holds it for the buyer."""
    return _checked([Posting(external(ref.rail), ref.currency, -amount_minor),
                     Posting(channel_account(ref), ref.currency, amount_minor)])


def card_refund_resolved(ref: ChannelRef, amount_minor: int) -> list[Posting]:
    """An operator paid a failed card refund back outside the rails: it leaves the hub."""
    return _checked([Posting(channel_account(ref), ref.currency, -amount_minor),
                     Posting(OPERATOR_PAID, ref.currency, amount_minor)])


def paid_out(seller_account_id: str, currency: str, amount_minor: int) -> list[Posting]:
    """A card-rail payout (Stripe Connect transfer) to a seller."""
    return _checked([Posting(seller_payable(seller_account_id), currency, -amount_minor),
                     Posting(external("card"), currency, amount_minor)])


def _checked(postings: list[Posting]) -> list[Posting]:
    check_balanced(postings)
    return [p for p in postings if p.amount_minor != 0]


def check_balanced(postings: Iterable[Posting]) -> None:
    """Postings must sum to zero per currency, with integer amounts only."""
    sums: dict[str, int] = defaultdict(int)
    for p in postings:
        if type(p.amount_minor) is not int:
            raise LedgerInvariantViolated(f"non-integer amount on {p.account}")
        sums[p.currency] += p.amount_minor
    bad = {c: s for c, s in sums.items() if s != 0}
    if bad:
        raise LedgerInvariantViolated(f"postings do not balance: {bad}")


def check_balances(balances: Mapping[tuple[str, str], int]) -> None:
    """Whole-ledger invariants over ``{(account, currency): balance}``.

    Every currency sums to zero; no channel and no seller payable is below zero; only the
    external rails may be negative (money that came in from outside).
    """
    sums: dict[str, int] = defaultdict(int)
    for (account, currency), balance in balances.items():
        sums[currency] += balance
        if balance < 0 and not account.startswith("external:"):
            raise LedgerInvariantViolated(f"{account} is below zero in {currency}: {balance}")
    bad = {c: s for c, s in sums.items() if s != 0}
    if bad:
        raise LedgerInvariantViolated(f"ledger does not balance: {bad}")


def channel_postings(ref: ChannelRef, event: object) -> list[Posting]:
    """The postings of one Channel event (the balances projection applies the same rules)."""
    name = type(event).__name__
    data = event.__dict__
    if name == "Opened":
        return funded(ref, data["deposit_minor"]) if data["deposit_minor"] else []
    if name in ("ToppedUp", "LatePaymentReceived"):  # a late payment's Refunded follows at once
        return funded(ref, data["amount_minor"])
    if name == "Debited":
        return debited(ref, data["amount_minor"], data["fee_minor"], data["seller_account_id"])
    if name == "Settled":
        return settled(ref, data["seller_amounts"], data["seller_reversed"], data["fee_reversed_minor"])
    if name == "Refunded":
        return refunded(ref, data["amount_minor"])
    if name == "CardRefundFailed":
        return card_refund_reversed(ref, data["amount_minor"])
    if name == "CardRefundResolved":
        return card_refund_resolved(ref, data["amount_minor"])
    return []


def payout_reversed(seller_account_id: str, currency: str, amount_minor: int) -> list[Posting]:
    """A payout Stripe refused for good: the amount is owed to the seller again."""
    return _checked([Posting(seller_payable(seller_account_id), currency, amount_minor),
                     Posting(external("card"), currency, -amount_minor)])
