"""The money part of ``aimarket audit verify``: rebuild the ledger from the event log alone.

Every channel is replayed from its events and must pass ``Channel.check_invariants`` after
each save (a run of consecutive events of one channel in the log: a command saves its
events together, and the rules hold between commands, not between a ``Settled`` and the
``Refunded`` saved with it); every money event's postings must balance; the whole ledger must then pass
``ledger.check_balances`` (each currency sums to zero, no channel or payable below zero).
Finally the balances read model (``ledger_balances``) must equal what the log gives up to
the position that projection has reached, so a read model that drifted from the log (a
bug, a hand edit) is caught. Memory grows with the number of channels, not of events.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from domain import ledger
from domain.channel import Channel
from domain.ledger import ChannelRef, LedgerInvariantViolated, Posting
from domain.payout import SellerPayouts


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
        self.money_events = 0
        self._due: tuple[int, str] | None = None  # (position, channel) whose save may go on

    def feed(self, position: int, event: Any) -> None:
        channel_id = str(event.originator_id) if isinstance(event, Channel.Event) else None
        if self._due is not None and self._due[1] != channel_id:
            self._check_due()
        if channel_id is not None:
            postings = self._channel_event(position, event)
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

    def _channel_event(self, position: int, event: Any) -> list[Posting]:
        channel_id = str(event.originator_id)
        try:
            channel = event.mutate(self.channels.get(channel_id))
        except Exception as exc:  # noqa: BLE001 - report, do not stop the audit
            self.problems.append(f"position {position}: channel {channel_id} does not replay: {exc!r}")
            return []
        self.channels[channel_id] = channel
        self._due = (position, channel_id)
        ref = self.refs.setdefault(channel_id, ChannelRef(channel_id, channel.buyer_account_id, channel.currency,
                                                          channel.rail))
        return ledger.channel_postings(ref, event)

    def _check_due(self) -> None:
        assert self._due is not None
        position, channel_id = self._due
        self._due = None
        try:
            self.channels[channel_id].check_invariants()
        except LedgerInvariantViolated as exc:
            self.problems.append(f"position {position}: {exc}")

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

    def report(self, read_model: list[dict[str, Any]] | None) -> dict[str, Any]:
        """Check the whole ledger, and ``read_model`` (rows of ``ledger_balances``) against it."""
        if self._due is not None:
            self._check_due()
        try:
            ledger.check_balances(self.balances)
        except LedgerInvariantViolated as exc:
            self.problems.append(f"ledger: {exc}")
        if read_model is not None and self.tracked_position is not None:
            stored = {(r["account"], r["currency"]): int(r["balance_minor"]) for r in read_model}
            for key in sorted(set(stored) | set(self.projected)):
                if stored.get(key, 0) != self.projected.get(key, 0):
                    self.problems.append(f"read model: {key[0]} {key[1]} is {stored.get(key, 0)}, "
                                         f"the log says {self.projected.get(key, 0)}")
        totals: dict[str, int] = defaultdict(int)
        for (account, currency), amount in self.balances.items():
            if account.startswith("external:"):
                totals[currency] -= amount  # money the rails brought in and still held
        return {"money_events": self.money_events, "channels": len(self.channels),
                "held_minor": dict(sorted(totals.items())), "read_model_position": self.tracked_position}
