"""``aimarket audit verify --chain``: the ledger against the chain, channel by channel.

Every chain channel the event log opened (its ``Channel.Opened`` events, read by topic) is
loaded from the log and compared with what the Channels contract holds now
(``SettlementService.ledger_vs_chain``, the rules the reconcile sweep applies too):

* the ledger says settled on chain (a transaction as ``settlement_ref``) <=> the contract
  says ``settled``, and then by the same transaction, with the same cumulative, fee, refund
  and the same amount credited to each seller wallet (the contract's ``ChannelSettled`` and
  ``PayeeCredited`` logs);
* a channel the buyer reclaimed on chain is not still held in the ledger;
* the contract's deposit is not below the ledger's (above it: a top-up the buyer has not
  posted to the hub yet, reported as a warning).

Reads only; any mismatch names its channel and makes the command exit non-zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from eventsourcing.utils import get_topic

from domain.model.channel import Channel
from ops.adapters.evm.settle_txs import block_of, read_settled

BATCH = 1000


def chain_channel_ids(market: Any) -> Iterator[str]:
    """Ids of the channels opened on the chain rail, in log order."""
    topics = [get_topic(Channel.Opened)]
    position = 0
    while True:
        batch = market.recorder.select_notifications(start=position, limit=BATCH, topics=topics,
                                                     inclusive_of_start=False)
        if not batch:
            return
        for notification in batch:
            position = notification.id
            event = market.mapper.to_domain_event(notification)
            if event.rail == "chain":
                yield str(event.originator_id)


def verify_chain(market: Any, hub: Any, channel_ids: list[str] | None = None) -> dict[str, Any]:
    """Compare every chain channel's ledger (or those of ``channel_ids``) with the contract
    ``hub`` (``ChainChannels``)."""
    problems: list[str] = []
    warnings: list[str] = []
    checked = 0
    for channel_id in chain_channel_ids(market) if channel_ids is None else channel_ids:
        checked += 1
        channel = market.money.channel(channel_id)
        state = hub.channel(channel.chain_channel_id)
        record = _record(market, hub, channel) if state.status == "settled" else None
        found = market.settlement.ledger_vs_chain(channel_id, state.status, record)
        if state.status != "none" and state.deposit < channel.deposit_minor:
            found.append(f"deposit on chain {state.deposit}, ledger {channel.deposit_minor}")
        elif state.deposit > channel.deposit_minor:
            warnings.append(f"channel {channel_id}: deposit on chain {state.deposit}, ledger "
                            f"{channel.deposit_minor} (a top-up not posted to the hub yet?)")
        problems += [f"channel {channel_id}: {p}" for p in found]
    return {"ok": not problems, "chain_channels": checked, "problems": problems[:100],
            "warnings": warnings[:100]}


def _record(market: Any, hub: Any, channel: Channel) -> dict[str, Any] | None:
    """The contract's settle record: the ledger's and the settlement's transactions first,
    then the logs from the deposit's block."""
    settlement = market.settlement.settlement(channel.id)
    known = [s["tx_hash"] for s in settlement.submissions] if settlement is not None else []
    if channel.settlement_ref.startswith("0x"):
        known.insert(0, channel.settlement_ref)
    from_block = block_of(hub, channel.funding_refs[0].split(":")[0]) if channel.funding_refs else 0
    return read_settled(hub, channel.chain_channel_id, known, from_block)
