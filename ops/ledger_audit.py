"""The money part of ``aimarket audit verify``: rebuild the ledger from the event log alone.

Every channel is replayed from its events and must pass ``Channel.check_invariants`` after
each save (a run of consecutive events of one channel in the log: a command saves its
events together, and the rules hold between commands, not between a ``Settled`` and the
``Refunded`` saved with it); every money event's postings must balance; the whole ledger must then pass
``ledger.check_balances`` (each currency sums to zero, no channel or payable below zero).
Finally the balances read model (``ledger_balances``) must equal what the log gives up to
the position that projection has reached, so a read model that drifted from the log (a
bug, a hand edit) is caught. Each ``Debited`` fee must follow the fee rule: the cumulative
one (``debit_fee``), or, for debits recorded before it, the older per-debit rounding
(``fee_for(amount)``); the recorded fee is what counts either way, never recomputed.
Holds (metered sessions) move no money and post nothing; the channel's invariants cover them
(held = the sum of its holds, spent + held <= deposit, none left at settlement), and each
capture's ``Debited`` (key ``invoke:<invocation id>``) must charge exactly what the
``HoldReleased`` just before it captured, never more than the hold. The report gives the holds
still open per currency (``holds_open_minor``).
Memory grows with the number of channels, not of events.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from domain.model import ledger
from domain.model.channel import Channel
from domain.model.channel_rules import debit_fee, fee_for
from domain.model.ledger import ChannelRef, LedgerInvariantViolated, Posting
from domain.model.payout import SellerPayouts


class LedgerAudit:
    """Fed every decoded event in log order; ``report`` says what is wrong (empty: nothing)."""

    def __init__(self, tracked_position: int | None) -> None:
        self.tracked_position = tracked_position  # the balances projection's position, if any
        self.problems: list[str] = []
        self.balances: dict[tuple[str, str], int] = defaultdict(int)
        self.projected: dict[tuple[str, str], int] = defaultdict(int)  # up to tracked_position
        self.channels: dict[str, Channel] = {}
        self.refs: dict[str, ChannelRef] = {}
        self.payout_owners: dict[str, tuple[str, str]] = {}  # aggregate id -> (seller, currency)
        self.payouts: dict[str, int] = {}  # payout id -> amount
        self.pending: dict[str, int] = {}  # channel -> card refund not yet sent, up to tracked_position
        self.money_events = 0
        self._due: tuple[int, str] | None = None  # (position, channel) whose save may go on
        self.captures: dict[str, int] = {}  # debit key of a capture -> the amount its HoldReleased captured

    def feed(self, position: int, event: Any) -> None:
        channel_id = str(event.originator_id) if isinstance(event, Channel.Event) else None
        if self._due is not None and self._due[1] != channel_id:
            self._check_due()
        if channel_id is not None:
            postings = self._channel_event(position, channel_id, event)
        elif isinstance(event, SellerPayouts.Event):
            postings = self._payout_event(event)
        else:
            return
        self.money_events += 1
        try:
            ledger.check_balanced(postings)
        except LedgerInvariantViolated as exc:
            self.problems.append(f"position {position}: {exc}")
        for p in postings:
            self.balances[(p.account, p.currency)] += p.amount_minor
            if self.tracked_position is not None and position <= self.tracked_position:
                self.projected[(p.account, p.currency)] += p.amount_minor

    def _channel_event(self, position: int, channel_id: str, event: Any) -> list[Posting]:
        before = self.channels.get(channel_id)
        if isinstance(event, Channel.Debited) and before is not None:
            self._check_fee(position, before, event)
        self._check_capture(position, channel_id, before, event)
        try:
            channel = event.mutate(before)
        except Exception as exc:  # noqa: BLE001 - report, do not stop the audit
            self.problems.append(f"position {position}: channel {channel_id} does not replay: {exc!r}")
            return []
        self.channels[channel_id] = channel
        self._due = (position, channel_id)
        if self.tracked_position is not None and position <= self.tracked_position:
            self.pending[channel_id] = _card_refund_pending(channel)
        ref = self.refs.setdefault(channel_id, ChannelRef(channel_id, channel.buyer_account_id, channel.currency,
                                                          channel.rail))
        try:
            return ledger.channel_postings(ref, event)
        except Exception as exc:  # noqa: BLE001 - a malformed event: report, do not stop the audit
            self.problems.append(f"position {position}: channel {channel_id}: no postings: {exc!r}")
            return []

    def _check_fee(self, position: int, channel: Channel, event: Any) -> None:
        try:
            rules = (debit_fee(channel.spent_minor, event.amount_minor, channel.fee_bps),
                     fee_for(event.amount_minor, channel.fee_bps))  # the cumulative rule; the older one
        except Exception as exc:  # noqa: BLE001 - a malformed event: report, do not stop the audit
            self.problems.append(f"position {position}: channel {channel.id}: fee not checkable: {exc!r}")
            return
        if event.fee_minor not in rules:
            self.problems.append(f"position {position}: channel {channel.id}: debit fee {event.fee_minor} is not "
                                 f"the fee rule's {rules[0]} (nor the older per-debit {rules[1]})")

    def _check_capture(self, position: int, channel_id: str, before: Channel | None, event: Any) -> None:
        """A capture charges what its hold's release captured, within the hold."""
        if isinstance(event, Channel.HoldReleased):
            held = (before.holds if before is not None else {}).get(event.invocation_id)
            if held is None or event.captured_minor + event.released_minor != held["amount_minor"]:
                self.problems.append(f"position {position}: channel {channel_id}: release of hold "
                                     f"{event.invocation_id} does not match an open hold")
            elif event.captured_minor:
                self.captures[f"invoke:{event.invocation_id}"] = event.captured_minor
        elif isinstance(event, Channel.Debited) and event.idempotency_key.startswith("invoke:"):
            captured = self.captures.pop(event.idempotency_key, None)
            if captured != event.amount_minor:
                self.problems.append(f"position {position}: channel {channel_id}: capture {event.idempotency_key} "
                                     f"charges {event.amount_minor}, its hold released {captured} as captured")

    def _check_due(self) -> None:
        assert self._due is not None
        position, channel_id = self._due
        self._due = None
        try:
            self.channels[channel_id].check_invariants()
        except LedgerInvariantViolated as exc:
            self.problems.append(f"position {position}: {exc}")

    def _compare(self, what: str, stored: dict[Any, int], derived: dict[Any, int]) -> None:
        for key in sorted(set(stored) | set(derived)):
            if stored.get(key, 0) != derived.get(key, 0):
                name = " ".join(key) if isinstance(key, tuple) else key
                self.problems.append(f"{what} {name} is {stored.get(key, 0)}, the log says {derived.get(key, 0)}")

    def _payout_event(self, event: Any) -> list[Posting]:
        owner_id = str(event.originator_id)
        if isinstance(event, SellerPayouts.Started):
            self.payout_owners[owner_id] = (event.seller_account_id, event.currency)
            return []
        seller, currency = self.payout_owners.get(owner_id, ("?", "?"))
        if isinstance(event, SellerPayouts.PayoutRequested):
            self.payouts[event.payout_id] = event.amount_minor
            return ledger.paid_out(seller, currency, event.amount_minor)
        if isinstance(event, SellerPayouts.PayoutFailed) and not event.retryable:
            if event.payout_id not in self.payouts:
                self.problems.append(f"payout {event.payout_id} failed but was never requested")
                return []
            return ledger.payout_reversed(seller, currency, self.payouts[event.payout_id])
        return []

    def report(self, balances: dict[tuple[str, str], int] | None, pending: dict[str, int] | None) -> dict[str, Any]:
        """Check the whole ledger, and the read model (``ledger_balances`` as ``{(account,
        currency): balance}``, ``money_channels`` as ``{channel: card refund pending}``)
        against it."""
        if self._due is not None:
            self._check_due()
        try:
            ledger.check_balances(self.balances)
        except LedgerInvariantViolated as exc:
            self.problems.append(f"ledger: {exc}")
        if balances is not None and pending is not None:
            self._compare("read model: ledger_balances", balances, self.projected)
            self._compare("read model: card_refund_pending_minor of channel", pending, self.pending)
        totals: dict[str, int] = defaultdict(int)
        for (account, currency), amount in self.balances.items():
            if account.startswith("external:"):
                totals[currency] -= amount  # money the rails brought in and still held
        holds: dict[str, int] = defaultdict(int)
        for channel in self.channels.values():
            if channel.held_minor:
                holds[channel.currency] += channel.held_minor
        return {"money_events": self.money_events, "channels": len(self.channels),
                "held_minor": dict(sorted(totals.items())), "holds_open_minor": dict(sorted(holds.items())),
                "read_model_position": self.tracked_position}


def _card_refund_pending(channel: Channel) -> int:
    """What the refund sweep still has to send for this channel (the read model's column)."""
    if channel.rail != "card":
        return 0
    return channel.refunded_minor - sum(r["amount_minor"] for r in channel.card_refunds.values())
