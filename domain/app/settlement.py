"""On-chain settlement commands: request (intent), submitted, confirmed (with the channel's
Settled and Refunded in the same save), failed. The worker (``workers/settlement.py``)
calls these around its outside calls; none of them talks to the chain."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.app.money import RACING_ATTEMPTS
from domain.app.service import Service
from domain.model.errors import ChannelHoldsOpen, InvalidState, NotFound
from domain.model.ids import NS_PLATFORM, natural_id
from domain.model.settlement import Settlement, chain_mismatches, check_split

NS_SETTLEMENT = natural_id(NS_PLATFORM, "chain-settlement")


def settlement_id_for(channel_id: str | UUID) -> UUID:
    """One settlement per channel: a retried request lands on the same aggregate."""
    return natural_id(NS_SETTLEMENT, str(channel_id))


class SettlementService(Service):
    """The settlement service of the marketplace (composed into ``Marketplace.settlement``)."""

    def settlement(self, channel_id: str | UUID) -> Settlement | None:
        try:
            return self.load(Settlement, settlement_id_for(channel_id), "settlement")
        except NotFound:
            return None

    def request_settlement(self, meta: dict, channel_id: str | UUID) -> dict[str, Any]:
        """Record what a closing chain channel will pay on chain; the existing one if any.

        Raises:
            InvalidState: the channel is not a chain channel waiting for settlement.
            WalletRequired: a seller to be paid has no wallet bound (nowhere to pay).
            ChannelHoldsOpen: metered sessions still hold funds (the sweep retries once they end).
        """
        settlement_id = settlement_id_for(channel_id)

        def command() -> dict[str, Any]:
            if self.exists(settlement_id):
                return self.load(Settlement, settlement_id).to_public()
            channel = self.market.money.channel(channel_id)
            if channel.rail != "chain" or channel.status != "closing" or channel.voucher_minor == 0:
                raise InvalidState(f"channel is {channel.rail}/{channel.status}; nothing to settle on chain")
            if channel.holds:  # a capture still to come would change the split: wait for the holds to end
                raise ChannelHoldsOpen(f"{len(channel.holds)} metered sessions still hold funds on this channel")
            split = channel.settlement_split()
            paid = [(s, a) for s, a in sorted(split["seller_amounts"].items()) if a > 0]
            amounts = [a for _, a in paid]
            check_split(cumulative_minor=split["cumulative_minor"], amounts=amounts, fee_minor=split["fee_minor"],
                        fee_bps=channel.fee_bps, voucher_minor=channel.voucher_minor,
                        deposit_minor=channel.deposit_minor)
            if split["cumulative_minor"] != channel.voucher_minor:
                raise InvalidState("the latest voucher must be what is settled")
            settlement = Settlement(
                id=settlement_id, meta=meta, channel_id=str(channel.id), chain_channel_id=channel.chain_channel_id,
                cumulative_minor=split["cumulative_minor"], voucher_signature=channel.voucher_signature,
                seller_account_ids=[s for s, _ in paid], payees=[self.market.money.wallet_of(s) for s, _ in paid],
                amounts=amounts, fee_minor=split["fee_minor"], refund_minor=split["refund_minor"],
                currency=channel.currency)
            self.save(settlement)
            return settlement.to_public()

        return self.retrying(command, attempts=RACING_ATTEMPTS)

    def record_settlement_submitted(self, meta: dict, channel_id: str | UUID, *, tx_hash: str,
                                    nonce: int, raw_tx: str, gas: int) -> bool:
        """Record a signed settle transaction BEFORE it is broadcast (its hash is known)."""
        def command() -> bool:
            settlement = self._settlement(channel_id)
            changed = settlement.submit(meta, tx_hash=tx_hash, nonce=nonce, raw_tx=raw_tx, gas=gas)
            if changed:
                self.save(settlement)
            return changed

        return self.retrying(command, attempts=RACING_ATTEMPTS)

    def record_settlement_failed(self, meta: dict, channel_id: str | UUID, *, reason: str,
                                 retryable: bool, tx_hash: str | None = None) -> bool:
        """Record that the attempt (no ``tx_hash``) or the live transaction cannot succeed.

        Raises:
            InvalidState: a transaction is live (follow it), or ``tx_hash`` is not the live one.
        """
        def command() -> bool:
            settlement = self._settlement(channel_id)
            changed = settlement.fail(meta, reason=reason, retryable=retryable, tx_hash=tx_hash)
            if changed:
                self.save(settlement)
            return changed

        return self.retrying(command, attempts=RACING_ATTEMPTS)

    def confirm_settlement(self, meta: dict, channel_id: str | UUID, *, tx_hash: str,
                           block_number: int) -> dict[str, Any]:
        """The chain mined our settle transaction: Confirmed + channel Settled/Refunded, one save."""
        return self._confirm(meta, channel_id, lambda s: s.confirm(meta, tx_hash=tx_hash, block_number=block_number))

    def adopt_settlement(self, meta: dict, channel_id: str | UUID, *, tx_hash: str, block_number: int,
                         paid: dict[str, Any]) -> dict[str, Any]:
        """The contract was settled by a transaction no worker recorded, paying exactly this
        settlement's split: confirm by it (+ channel Settled/Refunded, one save).

        Raises:
            InvalidState: it paid something else (flag it for an operator instead).
        """
        return self._confirm(meta, channel_id, lambda s: s.adopt(meta, tx_hash=tx_hash, block_number=block_number,
                                                                 paid=paid))

    def _confirm(self, meta: dict, channel_id: str | UUID, decide: Any) -> dict[str, Any]:
        def command() -> dict[str, Any]:
            settlement = self._settlement(channel_id)
            if not decide(settlement):
                return settlement.to_public()
            channel = self.market.money.channel(channel_id)
            channel.settle(meta, settlement_ref=settlement.tx_hash)
            if (channel.settled_minor, channel.refunded_minor) != (settlement.cumulative_minor,
                                                                  settlement.refund_minor):
                raise InvalidState("the channel changed since its settlement was requested")
            channel.check_invariants()
            self.save(settlement, channel)
            return settlement.to_public()

        return self.retrying(command, attempts=RACING_ATTEMPTS)

    def flag_settlement(self, meta: dict, channel_id: str | UUID, *, reason: str) -> bool:
        """Record an alert the reconcile sweep cannot resolve (visible on the settlement)."""
        def command() -> bool:
            settlement = self._settlement(channel_id)
            changed = settlement.flag(meta, reason=reason)
            if changed:
                self.save(settlement)
            return changed

        return self.retrying(command, attempts=RACING_ATTEMPTS)

    def ledger_vs_chain(self, channel_id: str | UUID, chain_status: str,
                        record: dict[str, Any] | None) -> list[str]:
        """How a chain channel's ledger disagrees with the contract (empty: it agrees).

        ``chain_status``: the contract's status of the channel; ``record``: how it settled
        (``SettleChain.settled_record``) when it did. Settled on chain by a transaction
        (``settlement_ref``) in the ledger <=> settled in the contract, by the same
        transaction, paying the same cumulative, fee, refund and per-wallet shares; a
        deposit the buyer reclaimed on chain is not still held in the ledger.
        """
        channel = self.market.money.channel(channel_id)
        ledger_settled = channel.status == "settled" and channel.settlement_ref not in ("", "internal")
        if chain_status == "none":
            return ["the contract has no such channel"]
        if chain_status == "settled" and not ledger_settled:
            how = "settled internally" if channel.status == "settled" else channel.status
            return [f"the contract settled it (tx {record and record['tx_hash']}) but the ledger says {how}"]
        if ledger_settled and chain_status != "settled":
            return [f"the ledger says settled by {channel.settlement_ref} but the contract says {chain_status}"]
        if chain_status == "reclaimed" and channel.status != "settled":
            return [f"the buyer reclaimed the deposit on chain but the ledger still holds it ({channel.status})"]
        if not ledger_settled or record is None:
            return []
        found = [] if record["tx_hash"] == channel.settlement_ref else [
            f"settled on chain by {record['tx_hash']}, the ledger names {channel.settlement_ref}"]
        split = channel.settlement_split()
        paid = {"cumulative_minor": channel.settled_minor, "fee_minor": split["fee_minor"],
                "refund_minor": channel.refunded_minor,
                "payees": [[self.market.money.wallet_of(s), a] for s, a in split["seller_amounts"].items() if a]}
        return found + chain_mismatches(paid, record)

    def _settlement(self, channel_id: str | UUID) -> Settlement:
        return self.load(Settlement, settlement_id_for(channel_id), "settlement")
