"""Settlement of an on-chain channel: intent first, then the transaction, then its outcome.

``Requested`` fixes what will be paid (the latest buyer-signed voucher, split per seller
wallet, the fee, the refund) before anything touches the chain. ``Submitted`` records a
locally signed raw transaction (its hash, nonce and gas) *before* it is broadcast, so a
worker killed at any point can find it again: it looks the hash up, and rebroadcasts the
very same bytes if the chain has never seen them. One nonce carries at most one
transaction, so at most one of our settle transactions for a channel can ever be mined;
``Failed(retryable)`` is recorded only once that nonce was consumed by something else
(the transaction can then never be mined), and only then may a new one be signed.
``Confirmed`` is saved in the same transaction as the channel's ``Settled``/``Refunded``.

A settlement whose transaction was mined never ends ``Failed``: a failure of the attempt
(dry run reverted, window closed) is refused while a recorded transaction is live (the
worker follows that one instead), a verdict on a transaction must name the live one, and
``confirm`` of any recorded transaction wins over an earlier failure. A settle the contract
holds that no recorded transaction made (someone with the operator key settled behind the
hub) is ``adopt``ed only if it paid exactly this settlement's split; otherwise ``flag``
records an alert for an operator. ``chain_mismatches`` (pure) compares a channel's ledger
with the contract's record, for the reconcile sweep and ``aimarket audit verify --chain``.

The id is uuid5 of the channel id, so a retried request lands on the same settlement.
Pure: no I/O, clock or randomness inside event methods.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.errors import InvalidState
from domain.model.ledger import LedgerInvariantViolated
from domain.model.money import BPS_DENOMINATOR


def check_split(*, cumulative_minor: int, amounts: list[int], fee_minor: int, fee_bps: int, voucher_minor: int,
                deposit_minor: int) -> None:
    """The contract's rules, checked before we sign anything (a failure is a bug)."""
    if any(type(v) is not int or v < 0 for v in (cumulative_minor, fee_minor, *amounts)):
        raise LedgerInvariantViolated("settlement amounts must be non-negative integers")
    if sum(amounts) + fee_minor != cumulative_minor:
        raise LedgerInvariantViolated("payee amounts + fee must equal the settled cumulative amount")
    if fee_minor * BPS_DENOMINATOR > cumulative_minor * fee_bps:
        raise LedgerInvariantViolated("settlement fee above the channel's rate")
    if not cumulative_minor <= voucher_minor <= deposit_minor:
        raise LedgerInvariantViolated("settled <= latest voucher <= deposit broken")


class Settlement(MarketAggregate):
    """One channel's on-chain close: Requested -> Submitted* -> Confirmed | Failed."""

    @event("Requested")
    def __init__(
        self, id: UUID, meta: dict, channel_id: str, chain_channel_id: str, cumulative_minor: int,
        voucher_signature: str, seller_account_ids: list[str], payees: list[str], amounts: list[int],
        fee_minor: int, refund_minor: int, currency: str,
    ) -> None:
        self.channel_id = channel_id
        self.chain_channel_id = chain_channel_id
        self.cumulative_minor = cumulative_minor
        self.voucher_signature = voucher_signature
        self.seller_account_ids = seller_account_ids
        self.payees = payees
        self.amounts = amounts
        self.fee_minor = fee_minor
        self.refund_minor = refund_minor
        self.currency = currency
        self.status = "requested"  # -> submitted -> confirmed | failed
        self.submissions: list[dict[str, Any]] = []  # every signed tx, oldest first
        self.tx_hash = ""
        self.block_number = 0
        self.adopted = False  # confirmed by a settle transaction no worker of ours recorded
        self.failure: dict[str, Any] | None = None
        self.alert = ""  # what an operator must look at (the chain disagrees and we cannot resolve it)

    @property
    def live(self) -> dict[str, Any] | None:
        """The submission that may still be mined (at most one at a time), if any."""
        if self.status == "submitted":
            return self.submissions[-1]
        return None

    @property
    def may_submit(self) -> bool:
        return self.status == "requested" or (self.status == "failed" and bool(self.failure and
                                                                               self.failure["retryable"]))

    def submit(self, meta: dict, *, tx_hash: str, nonce: int, raw_tx: str, gas: int) -> bool:
        """Record a signed transaction before it is broadcast; False if it was recorded already."""
        tx_hash = tx_hash.lower()
        if any(s["tx_hash"] == tx_hash for s in self.submissions):
            return False
        if not self.may_submit:
            # A second live transaction could close the channel twice in our books.
            raise InvalidState(f"settlement is {self.status}; no new transaction")
        self._submitted(meta=meta, tx_hash=tx_hash, nonce=nonce, raw_tx=raw_tx, gas=gas)
        return True

    @event("Submitted")
    def _submitted(self, meta: dict, tx_hash: str, nonce: int, raw_tx: str, gas: int) -> None:
        self.submissions.append({"tx_hash": tx_hash, "nonce": nonce, "raw_tx": raw_tx, "gas": gas})
        self.status = "submitted"
        self.failure = None

    def confirm(self, meta: dict, *, tx_hash: str, block_number: int) -> bool:
        """Record the mined, successful settle transaction (any recorded one, also after a
        failure was recorded: the chain's outcome wins); False if already confirmed."""
        tx_hash = tx_hash.lower()
        if self._confirmed_already(tx_hash):
            return False
        if not any(s["tx_hash"] == tx_hash for s in self.submissions):
            raise InvalidState(f"{tx_hash} is not a transaction of this settlement")
        self._confirmed(meta=meta, tx_hash=tx_hash, block_number=block_number)
        return True

    def adopt(self, meta: dict, *, tx_hash: str, block_number: int, paid: dict[str, Any]) -> bool:
        """Confirm by a settle transaction nobody recorded here (the operator key settled the
        channel behind the hub), only if it paid exactly this split; False if confirmed already.

        ``paid``: the contract's record (``cumulative_minor``, ``fee_minor``, ``refund_minor``,
        ``payees`` as ``[[address, amount], ...]``).

        Raises:
            InvalidState: it paid other amounts or payees (an operator must resolve it).
        """
        tx_hash = tx_hash.lower()
        if self._confirmed_already(tx_hash):
            return False
        differences = chain_mismatches(self.expected_payment(), paid)
        if differences:
            raise InvalidState(f"settled on chain by {tx_hash} with other amounts: {'; '.join(differences)}")
        self._confirmed(meta=meta, tx_hash=tx_hash, block_number=block_number, adopted=True)
        return True

    def _confirmed_already(self, tx_hash: str) -> bool:
        if self.status != "confirmed":
            return False
        if tx_hash != self.tx_hash:
            raise LedgerInvariantViolated(f"settlement {self.id} confirmed by two transactions")
        return True

    @event("Confirmed")
    def _confirmed(self, meta: dict, tx_hash: str, block_number: int, adopted: bool = False) -> None:
        self.status = "confirmed"
        self.tx_hash = tx_hash
        self.block_number = block_number
        self.adopted = adopted
        self.failure = None
        self.alert = ""

    def fail(self, meta: dict, *, reason: str, retryable: bool, tx_hash: str | None = None) -> bool:
        """Record that the attempt, or the live transaction ``tx_hash``, cannot succeed; False
        if no change.

        Without ``tx_hash`` (the dry run reverted, the window closed) only while no recorded
        transaction is live: the live one may be mined (another worker's), and is followed.
        With ``tx_hash``: a verdict on that transaction (mined reverted, nonce taken), which
        must be the live one.

        Raises:
            InvalidState: confirmed; or a transaction is live (and not the one named).
        """
        if self.status == "confirmed":
            raise InvalidState("settlement is confirmed; it cannot fail")
        live = self.live
        if tx_hash is None and live is not None:
            raise InvalidState(f"transaction {live['tx_hash']} is live; follow it to its receipt")
        if tx_hash is not None and (live is None or live["tx_hash"] != tx_hash.lower()):
            raise InvalidState(f"{tx_hash} is not the live transaction of this settlement")
        if self.status == "failed" and self.failure == {"reason": reason[:300], "retryable": retryable}:
            return False
        self._failed(meta=meta, reason=reason[:300], retryable=retryable)
        return True

    @event("Failed")
    def _failed(self, meta: dict, reason: str, retryable: bool) -> None:
        self.status = "failed"
        self.failure = {"reason": reason, "retryable": retryable}

    def flag(self, meta: dict, *, reason: str) -> bool:
        """Raise an alert an operator must resolve (kept until a confirm); False if raised already."""
        reason = reason[:500]
        if self.alert == reason:
            return False
        self._flagged(meta=meta, reason=reason)
        return True

    @event("Flagged")
    def _flagged(self, meta: dict, reason: str) -> None:
        self.alert = reason

    def expected_payment(self) -> dict[str, Any]:
        """What the contract pays for this settlement, in the form of ``paid`` above."""
        return {"cumulative_minor": self.cumulative_minor, "fee_minor": self.fee_minor,
                "refund_minor": self.refund_minor, "payees": [[p, a] for p, a in zip(self.payees, self.amounts,
                                                                                    strict=True)]}

    def to_public(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "channel_id": self.channel_id, "chain_channel_id": self.chain_channel_id,
            "status": self.status, "cumulative_minor": self.cumulative_minor, "fee_minor": self.fee_minor,
            "refund_minor": self.refund_minor, "currency": self.currency,
            "payees": [{"seller_account_id": s, "address": p, "amount_minor": a}
                       for s, p, a in zip(self.seller_account_ids, self.payees, self.amounts, strict=True)],
            "tx_hash": self.tx_hash or None, "block_number": self.block_number or None,
            "submissions": [{"tx_hash": s["tx_hash"], "nonce": s["nonce"], "gas": s["gas"]} for s in self.submissions],
            "failure": self.failure, "adopted": self.adopted, "alert": self.alert or None,
        }


def _payees(payees: list[Any]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for address, amount in payees:
        totals[str(address).lower()] = totals.get(str(address).lower(), 0) + int(amount)
    return totals


def chain_mismatches(ledger: dict[str, Any], chain: dict[str, Any]) -> list[str]:
    """How what the contract paid (``chain``) differs from what the ledger says was paid
    (``ledger``); both as ``{cumulative_minor, fee_minor, refund_minor, payees: [[address,
    amount], ...]}`` (zero amounts and address case ignored). Empty: they agree."""
    found = [f"{name} on chain {chain[name]}, ledger {ledger[name]}"
             for name in ("cumulative_minor", "fee_minor", "refund_minor") if int(chain[name]) != int(ledger[name])]
    on_chain = {a: v for a, v in _payees(chain["payees"]).items() if v}
    in_ledger = {a: v for a, v in _payees(ledger["payees"]).items() if v}
    for address in sorted(set(on_chain) | set(in_ledger)):
        if on_chain.get(address, 0) != in_ledger.get(address, 0):
            found.append(f"payee {address} on chain {on_chain.get(address, 0)}, ledger {in_ledger.get(address, 0)}")
    return found
