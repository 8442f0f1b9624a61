"""Settlement worker: closes chain channels on the contract with the buyer's latest voucher.

``settle_channel(channel_id)`` (a Dramatiq actor; messages carry ids only) walks one
channel's ``Settlement`` forward from wherever a previous run stopped:

1. ``Requested`` (intent: the split) is recorded first, or found.
2. With no live transaction: check the contract's window (expiry + grace, chain time),
   dry-run, sign locally with explicit gas and the operator's pending nonce, record
   ``Submitted`` (hash, nonce, raw bytes) and only then broadcast.
3. With a live transaction: read its receipt. Mined -> ``Confirmed`` (+ the channel's
   ``Settled``/``Refunded``, one save). Unknown and its nonce still free -> rebroadcast the
   SAME bytes and wait. Unknown and its nonce used by another transaction -> it can never
   be mined: ``Failed(retryable)``, and step 2 signs a new one.

Any crash between steps leaves a state step 3 resumes from, so a killed worker restarted
ends with exactly one on-chain close (and the contract refuses a second settle anyway).
``sweep_settlements`` (cron) closes chain channels a margin before expiry and enqueues
every closing one, so settlement lands well before the buyer's reclaim opens.

``aimarket settle CHANNEL_ID`` runs one settlement in this process (settings from the
environment); tests run it as a real process and SIGKILL it at a pause they inject.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from domain.model.base import Meta
from domain.model.errors import InvalidState, MarketError, Unavailable
from domain.model.ports import SettleChain
from projections.balances import channels_due
from workers.runtime import WorkerRuntime

log = structlog.get_logger("workers.settlement")
SUBMIT_SLACK_S = 60  # do not start a settle this close to the window's end: it might be mined after it
MAX_ROUNDS = 4  # a dead transaction is replaced at most this often per run
Pause = Callable[[str], None]


def settle_channel(runtime: WorkerRuntime, channel_id: str, *, pause: Pause | None = None,
                   wait_s: float | None = None) -> str:
    """Drive the channel's settlement as far as it goes now; returns its status.

    ``pause(stage)`` is called after "recorded" (before the broadcast) and "submitted";
    crash tests inject one that blocks there so they can kill the process.

    Raises:
        Unavailable: the chain is unreachable or the tx is not mined yet (retry later).
    """
    market = runtime.market
    meta = Meta.system(f"settlement:{channel_id}", channel_id).as_dict()
    client = runtime.settle_chain()
    market.settlement.request_settlement(meta, channel_id)
    for _ in range(MAX_ROUNDS):
        settlement = market.settlement.settlement(channel_id)
        status = settlement.status
        if status == "confirmed" or (status == "failed" and not settlement.failure["retryable"]):
            break
        if settlement.live is not None:
            _follow(market, client, meta, settlement, wait_s)
        else:
            _submit(market, client, meta, settlement, pause or (lambda _stage: None), wait_s)
    status = market.settlement.settlement(channel_id).status
    log.info("job.settle_channel", channel_id=channel_id, status=status)
    return status


def _submit(market: Any, client: SettleChain, meta: dict, settlement: Any, pause: Pause,
            wait_s: float | None) -> None:
    channel_id = settlement.channel_id
    if _reconcile(market, client, meta, settlement):
        return
    if client.now_s() + SUBMIT_SLACK_S > client.window_end_s(settlement.chain_channel_id):
        # Past the window the contract refuses us and the buyer may reclaim: do not send.
        market.settlement.record_settlement_failed(meta, channel_id, reason="settle window closed", retryable=False)
        return
    try:
        signed = client.sign(**settle_args(settlement))
    except Unavailable:
        raise
    except MarketError as exc:  # the dry run reverted: the same transaction cannot succeed
        market.settlement.record_settlement_failed(meta, channel_id, reason=f"dry run: {exc}", retryable=False)
        return
    # Intent before the outside call: the hash is known before the chain sees the bytes.
    try:
        market.settlement.record_settlement_submitted(meta, channel_id, tx_hash=signed.tx_hash, nonce=signed.nonce,
                                           raw_tx=signed.raw_tx, gas=signed.gas)
    except InvalidState:
        return  # another worker recorded its transaction first: ours is never sent; follow theirs
    pause("recorded")
    client.broadcast(signed.raw_tx)
    pause("submitted")
    _follow(market, client, meta, market.settlement.settlement(channel_id), wait_s)


def _follow(market: Any, client: SettleChain, meta: dict, settlement: Any, wait_s: float | None) -> None:
    """Take the live transaction to Confirmed or Failed (or raise Unavailable to retry)."""
    live = settlement.live
    channel_id = settlement.channel_id
    mined = client.receipt(live["tx_hash"])
    if mined is None:
        if client.nonce_consumed(live["nonce"]):
            mined = client.receipt(live["tx_hash"])  # it may have been mined between the two reads
            if mined is None:
                market.settlement.record_settlement_failed(meta, channel_id, retryable=True,
                                                reason=f"nonce {live['nonce']} used by another transaction")
                return
        else:
            client.broadcast(live["raw_tx"])  # the same bytes: same nonce, same hash
            mined = client.wait(live["tx_hash"], wait_s)
            if mined is None:
                raise Unavailable(f"settle transaction {live['tx_hash']} not mined yet")
    if mined.status == 1:
        market.settlement.confirm_settlement(meta, channel_id, tx_hash=live["tx_hash"], block_number=mined.block_number)
    else:
        market.settlement.record_settlement_failed(meta, channel_id, retryable=False,
                                        reason=f"settle transaction reverted in block {mined.block_number}")


def _reconcile(market: Any, client: SettleChain, meta: dict, settlement: Any) -> bool:
    """Before signing anew: if an earlier transaction of ours was mined after all, confirm it."""
    for submission in settlement.submissions:
        mined = client.receipt(submission["tx_hash"])
        if mined is not None and mined.status == 1:
            market.settlement.confirm_settlement(meta, settlement.channel_id, tx_hash=submission["tx_hash"],
                                      block_number=mined.block_number)
            return True
    return False


def sweep_settlements(runtime: WorkerRuntime, enqueue: Callable[[str], Any] | None = None) -> list[str]:
    """Close chain channels near expiry; enqueue every chain channel waiting for settlement."""
    market = runtime.market
    meta = Meta.system("settlement-sweep").as_dict()
    queued: list[str] = []
    for row in channels_due(runtime.views, market.now_s(), market.money.config.settle_margin_s):
        if row["rail"] != "chain":
            continue
        channel_id = row["channel_id"]
        channel = market.money.channel(channel_id)
        if channel.status in ("open", "pending"):
            market.money.expire_channel(meta, channel_id)  # nothing signed: settles internally
            channel = market.money.channel(channel_id)
        settlement = market.settlement.settlement(channel_id)
        if channel.status != "closing" or (settlement is not None and settlement.status == "failed"
                                           and not settlement.failure["retryable"]):
            continue
        queued.append(channel_id)
        (enqueue or (lambda cid: settle_channel(runtime, cid)))(channel_id)
    log.info("job.sweep_settlements", queued=len(queued))
    return queued


SETTLE_QUEUE = "settlements"
SETTLE_ACTOR = "settle_channel"


def settle_args(settlement: Any) -> dict[str, Any]:
    """The ``SettleChain.sign`` arguments for a Settlement aggregate (its recorded split)."""
    return {"chain_channel_id": settlement.chain_channel_id, "cumulative_minor": settlement.cumulative_minor,
            "signature_hex": settlement.voucher_signature, "payees": list(settlement.payees),
            "amounts": list(settlement.amounts), "fee_minor": settlement.fee_minor}
