"""Settlement worker: closes chain channels on the contract with the buyer's latest voucher.

``settle_channel(channel_id)`` (a Dramatiq actor; messages carry ids only) walks one
channel's ``Settlement`` forward from wherever a previous run stopped, holding the
channel's settlement lease (``SettlementLease``: one worker at a time, freed when its
holder dies):

1. ``Requested`` (intent: the split) is recorded first, or found.
2. With no live transaction: check the contract's window (expiry + grace, chain time),
   dry-run, sign locally with explicit gas and the operator's pending nonce, record
   ``Submitted`` (hash, nonce, raw bytes) and only then broadcast.
3. With a live transaction: read its receipt. Mined -> ``Confirmed`` (+ the channel's
   ``Settled``/``Refunded``, one save). Unknown and its nonce still free -> rebroadcast the
   SAME bytes and wait. Unknown and its nonce used by another transaction -> it can never
   be mined: ``Failed(retryable)``, and step 2 signs a new one.

A failure is never recorded on a guess. Before recording one (the dry run reverted, the
window closed) the worker re-reads the settlement (another worker's live transaction is
followed, not failed), every recorded transaction's receipt, and the contract's own record
of the channel: if the contract settled it, that outcome is recorded instead (confirmed by
our transaction, adopted if someone else's paid exactly our split, flagged otherwise). A
settlement already failed for good is re-checked the same way on every run.

Any crash between steps leaves a state step 3 resumes from, so a killed worker restarted
ends with exactly one on-chain close (and the contract refuses a second settle anyway).
``sweep_settlements`` (cron) closes chain channels a margin before expiry and enqueues
every closing one; ``workers.settlement_reconcile`` compares the ledger with the contract.

``aimarket admin settle CHANNEL_ID`` runs one settlement in this process (settings from the
environment); tests run it as a real process and SIGKILL it at a pause they inject.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from domain.model.base import Meta
from domain.model.errors import InvalidState, MarketError, Unavailable
from domain.model.ports import SettleChain, SettlementLease
from projections.balances import channels_due
from workers.runtime import WorkerRuntime

log = structlog.get_logger("workers.settlement")
SUBMIT_SLACK_S = 60  # do not start a settle this close to the window's end: it might be mined after it
MAX_ROUNDS = 8  # steps per run: submit, follow, and a dead transaction replaced a few times
LEASE_WAIT_S = 10.0  # a second worker waits this long for the holder, then retries later
Pause = Callable[[str], None]


def settle_channel(runtime: WorkerRuntime, channel_id: str, *, pause: Pause | None = None,
                   wait_s: float | None = None, lease: SettlementLease | None = None,
                   lease_wait_s: float = LEASE_WAIT_S) -> str:
    """Drive the channel's settlement as far as it goes now; returns its status.

    ``pause(stage)`` is called at "signing" (before the dry run), "recorded" (after
    recording ``Submitted``, before the broadcast) and "submitted" (after it); tests inject
    one that blocks or crashes there. ``lease`` defaults to the runtime's.

    Raises:
        Unavailable: the chain is unreachable, the tx is not mined yet, or another worker
            holds the channel's lease (retry later).
    """
    with (lease or runtime.settlement_lease()).hold(f"settlement:{channel_id}", lease_wait_s):
        return _settle(runtime, channel_id, pause or (lambda _stage: None), wait_s)


def _settle(runtime: WorkerRuntime, channel_id: str, pause: Pause, wait_s: float | None) -> str:
    market = runtime.market
    meta = Meta.system(f"settlement:{channel_id}", channel_id).as_dict()
    client = runtime.settle_chain()
    market.settlement.request_settlement(meta, channel_id)
    for _ in range(MAX_ROUNDS):
        settlement = market.settlement.settlement(channel_id)
        if settlement.status == "confirmed":
            break
        if settlement.live is not None:
            _follow(market, client, meta, settlement, wait_s)
        elif settlement.may_submit:
            _submit(market, client, meta, settlement, pause)
        elif not record_chain_outcome(market, client, meta, channel_id):
            break  # failed for good, and the contract agrees nothing was settled
    status = market.settlement.settlement(channel_id).status
    log.info("job.settle_channel", channel_id=channel_id, status=status)
    return status


def _submit(market: Any, client: SettleChain, meta: dict, settlement: Any, pause: Pause) -> None:
    channel_id = settlement.channel_id
    if _confirm_mined(market, client, meta, settlement):
        return
    if client.now_s() + SUBMIT_SLACK_S > client.window_end_s(settlement.chain_channel_id):
        # Past the window the contract refuses us and the buyer may reclaim: do not send.
        _fail_unless_settled(market, client, meta, channel_id, "settle window closed")
        return
    pause("signing")
    try:
        signed = client.sign(**settle_args(settlement))
    except Unavailable:
        raise
    except MarketError as exc:  # the dry run reverted: maybe because the channel is settled already
        _fail_unless_settled(market, client, meta, channel_id, f"dry run: {exc}")
        return
    # Intent before the outside call: the hash is known before the chain sees the bytes.
    try:
        market.settlement.record_settlement_submitted(meta, channel_id, tx_hash=signed.tx_hash, nonce=signed.nonce,
                                                      raw_tx=signed.raw_tx, gas=signed.gas)
    except InvalidState:
        return  # another worker recorded its transaction first: ours is never sent; the next round follows it
    pause("recorded")
    client.broadcast(signed.raw_tx)
    pause("submitted")  # the next round follows it to its receipt, from the recorded state


def _follow(market: Any, client: SettleChain, meta: dict, settlement: Any, wait_s: float | None) -> None:
    """Take the live transaction to Confirmed or Failed (or raise Unavailable to retry)."""
    live = settlement.live
    if live is None:
        return
    channel_id = settlement.channel_id
    mined = client.receipt(live["tx_hash"])
    if mined is None:
        if client.nonce_consumed(live["nonce"]):
            mined = client.receipt(live["tx_hash"])  # it may have been mined between the two reads
            if mined is None:
                _record_verdict(market, meta, channel_id, live["tx_hash"], retryable=True,
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
        _record_verdict(market, meta, channel_id, live["tx_hash"], retryable=False,
                        reason=f"settle transaction reverted in block {mined.block_number}")


def _record_verdict(market: Any, meta: dict, channel_id: str, tx_hash: str, *, retryable: bool, reason: str) -> None:
    try:
        market.settlement.record_settlement_failed(meta, channel_id, reason=reason, retryable=retryable,
                                                   tx_hash=tx_hash)
    except InvalidState:
        pass  # another worker recorded an outcome for it first: the next round reads it


def _confirm_mined(market: Any, client: SettleChain, meta: dict, settlement: Any) -> bool:
    """If any recorded transaction of ours was mined successfully (after all), confirm it."""
    for submission in settlement.submissions:
        mined = client.receipt(submission["tx_hash"])
        if mined is not None and mined.status == 1:
            market.settlement.confirm_settlement(meta, settlement.channel_id, tx_hash=submission["tx_hash"],
                                                 block_number=mined.block_number)
            return True
    return False


def _fail_unless_settled(market: Any, client: SettleChain, meta: dict, channel_id: str, reason: str) -> None:
    """Record a permanent failure of the attempt, unless the state or the chain says otherwise."""
    fresh = market.settlement.settlement(channel_id)
    if fresh.live is not None or fresh.status == "confirmed":
        return  # another worker recorded a transaction since we read: follow it, never fail it
    if _confirm_mined(market, client, meta, fresh) or record_chain_outcome(market, client, meta, channel_id):
        return
    try:
        market.settlement.record_settlement_failed(meta, channel_id, reason=reason, retryable=False)
    except InvalidState:
        return  # a transaction was recorded meanwhile: the next round follows it
    log.warning("settlement.failed", channel_id=channel_id, reason=reason)


def record_chain_outcome(market: Any, client: SettleChain, meta: dict, channel_id: str) -> bool:
    """If the contract settled the channel, record that (True); False if it did not.

    By a recorded transaction: confirm it. By one nobody recorded (the operator key used
    behind the hub): adopt it if it paid exactly our split, else flag an alert (False).
    """
    settlement = market.settlement.settlement(channel_id)
    record = chain_record(market, client, channel_id, settlement)
    if record is None:
        return False
    ours = {s["tx_hash"] for s in settlement.submissions}
    if record["tx_hash"] in ours:
        market.settlement.confirm_settlement(meta, channel_id, tx_hash=record["tx_hash"],
                                             block_number=record["block_number"])
        return True
    try:
        market.settlement.adopt_settlement(meta, channel_id, tx_hash=record["tx_hash"],
                                           block_number=record["block_number"], paid=record)
    except InvalidState as exc:
        raise_alert(market, meta, channel_id, str(exc))
        return False
    log.warning("settlement.adopted", channel_id=channel_id, tx_hash=record["tx_hash"])
    return True


def chain_record(market: Any, client: SettleChain, channel_id: str, settlement: Any = None) -> dict[str, Any] | None:
    """The contract's settle record of the channel, if it settled: our recorded transactions
    and the ledger's reference are looked at first, the logs searched from the deposit's block."""
    channel = market.money.channel(channel_id)
    known = [s["tx_hash"] for s in settlement.submissions] if settlement is not None else []
    if channel.settlement_ref.startswith("0x"):
        known.append(channel.settlement_ref)
    funded = client.receipt(channel.funding_refs[0].split(":")[0]) if channel.funding_refs else None
    return client.settled_record(channel.chain_channel_id, known=known,
                                 from_block=funded.block_number if funded is not None else 0)


def raise_alert(market: Any, meta: dict, channel_id: str, reason: str) -> None:
    """What an operator must resolve: a structured error line, and on the settlement (if any)."""
    log.error("settlement.alert", channel_id=channel_id, reason=reason)
    if market.settlement.settlement(channel_id) is not None:
        market.settlement.flag_settlement(meta, channel_id, reason=reason)


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
        if channel.holds:  # metered sessions still to capture or lapse: a later run takes it
            continue
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
