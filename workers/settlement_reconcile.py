"""Reconcile sweep: every closing or settled chain channel against the contract's own state.

The settlement worker never records a failure on a guess, but the ledger and the chain can
still part: a worker that recorded a failure before this rule existed, the operator key
used behind the hub, a node that lost a block. ``reconcile_settlements`` (cron, every
``RECONCILE_EVERY_S``) reads, for each chain channel the read model lists as closing or
settled, the contract's status and settle record (``SettleChain.status`` /
``settled_record``) and:

* ledger ``closing``, contract ``settled``: records the on-chain outcome (``Confirmed`` by
  our recorded transaction, or adopted when another paid exactly our split; the channel's
  ``Settled``/``Refunded`` in the same save), also over a ``Failed`` settlement;
* anything it cannot resolve (other amounts or payees, a deposit reclaimed by the buyer
  while the ledger holds it, a settlement failed for good, a ledger settled that the
  contract is not): an alert, as a structured ``settlement.alert`` error line and as
  ``Flagged`` on the settlement (its ``alert``, shown until a confirm), for an operator.

Read only on the chain: nothing is signed or sent here.
"""

from __future__ import annotations

from typing import Any

import structlog

from domain.model.base import Meta
from domain.model.ports import SettleChain
from projections.balances import chain_channels_settling
from workers.runtime import WorkerRuntime
from workers.settlement import chain_record, raise_alert, record_chain_outcome

log = structlog.get_logger("workers.settlement")
PAGE = 500


def reconcile_settlements(runtime: WorkerRuntime) -> dict[str, list[str]]:
    """Compare every closing or settled chain channel with the contract; the channel ids
    by outcome (``ok``, ``pending``, ``recorded``, ``alert``)."""
    market, client = runtime.market, runtime.settle_chain()
    meta = Meta.system("settlement-reconcile").as_dict()
    outcomes: dict[str, list[str]] = {"ok": [], "pending": [], "recorded": [], "alert": []}
    after = ""
    while True:
        rows = chain_channels_settling(runtime.views, after, PAGE)
        for row in rows:
            outcome = reconcile_channel(market, client, meta, row["channel_id"])
            outcomes[outcome].append(row["channel_id"])
        if len(rows) < PAGE:
            break
        after = rows[-1]["channel_id"]
    log.info("job.reconcile_settlements", **{k: len(v) for k, v in outcomes.items()})
    return outcomes


def reconcile_channel(market: Any, client: SettleChain, meta: dict, channel_id: str) -> str:
    """One channel: ``ok`` (agrees), ``pending`` (closing, nothing on chain yet),
    ``recorded`` (the chain's settle now recorded) or ``alert``."""
    channel = market.money.channel(channel_id)
    chain_status = client.status(channel.chain_channel_id)
    settlement = market.settlement.settlement(channel_id)
    record = chain_record(market, client, channel_id, settlement) if chain_status == "settled" else None
    if channel.status == "closing" and record is not None:
        market.settlement.request_settlement(meta, channel_id)  # the intent to confirm against, if none yet
        return "recorded" if record_chain_outcome(market, client, meta, channel_id) else "alert"
    problems = market.settlement.ledger_vs_chain(channel_id, chain_status, record)
    if channel.status == "closing" and not problems:
        if settlement is not None and settlement.status == "failed" and not settlement.failure["retryable"]:
            problems = [f"settlement failed for good ({settlement.failure['reason']}); the channel holds the "
                        "deposit until the buyer reclaims it"]
    if problems:
        raise_alert(market, meta, channel_id, "; ".join(problems))
        return "alert"
    return "pending" if channel.status == "closing" else "ok"
