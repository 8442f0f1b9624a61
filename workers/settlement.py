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

``python -m workers.settlement --once CHANNEL_ID`` runs one settlement in this process
(settings from the environment); tests run it as a real process and SIGKILL it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import structlog
from dramatiq.brokers.redis import RedisBroker

from domain.base import Meta
from domain.errors import InvalidState, MarketError, Unavailable
from projections.balances import channels_due
from workers.chain.settle_txs import SettleClient, settle_args

log = structlog.get_logger("workers.settlement")
PAUSE_ENV = "AIMARKET_TEST_PAUSE_AFTER"  # test hook: "recorded" (before broadcast) or "submitted"
SUBMIT_SLACK_S = 60  # do not start a settle this close to the window's end: it might be mined after it
MAX_ROUNDS = 4  # a dead transaction is replaced at most this often per run
Pause = Callable[[str], None]


def settle_channel(runtime: Any, channel_id: str, *, pause: Pause | None = None,
                   wait_s: float | None = None) -> str:
    """Drive the channel's settlement as far as it goes now; returns its status.

    Raises:
        Unavailable: the chain is unreachable or the tx is not mined yet (retry later).
    """
    market = runtime.market
    meta = Meta.system(f"settlement:{channel_id}", channel_id).as_dict()
    client = SettleClient(market.chain())
    market.request_settlement(meta, channel_id)
    for _ in range(MAX_ROUNDS):
        settlement = market.settlement(channel_id)
        status = settlement.status
        if status == "confirmed" or (status == "failed" and not settlement.failure["retryable"]):
            break
        if settlement.live is not None:
            _follow(market, client, meta, settlement, wait_s)
        else:
            _submit(market, client, meta, settlement, pause or (lambda _stage: None), wait_s)
    status = market.settlement(channel_id).status
    log.info("job.settle_channel", channel_id=channel_id, status=status)
    return status


def _submit(market: Any, client: SettleClient, meta: dict, settlement: Any, pause: Pause,
            wait_s: float | None) -> None:
    channel_id = settlement.channel_id
    if _reconcile(market, client, meta, settlement):
        return
    if client.now_s() + SUBMIT_SLACK_S > client.window_end_s(settlement.chain_channel_id):
        # Past the window the contract refuses us and the buyer may reclaim: do not send.
        market.record_settlement_failed(meta, channel_id, reason="settle window closed", retryable=False)
        return
    try:
        signed = client.sign(**settle_args(settlement))
    except Unavailable:
        raise
    except MarketError as exc:  # the dry run reverted: the same transaction cannot succeed
        market.record_settlement_failed(meta, channel_id, reason=f"dry run: {exc}", retryable=False)
        return
    # Intent before the outside call: the hash is known before the chain sees the bytes.
    try:
        market.record_settlement_submitted(meta, channel_id, tx_hash=signed.tx_hash, nonce=signed.nonce,
                                           raw_tx=signed.raw_tx, gas=signed.gas)
    except InvalidState:
        return  # another worker recorded its transaction first: ours is never sent; follow theirs
    pause("recorded")
    client.broadcast(signed.raw_tx)
    pause("submitted")
    _follow(market, client, meta, market.settlement(channel_id), wait_s)


def _follow(market: Any, client: SettleClient, meta: dict, settlement: Any, wait_s: float | None) -> None:
    """Take the live transaction to Confirmed or Failed (or raise Unavailable to retry)."""
    live = settlement.live
    channel_id = settlement.channel_id
    mined = client.receipt(live["tx_hash"])
    if mined is None:
        if client.nonce_consumed(live["nonce"]):
            mined = client.receipt(live["tx_hash"])  # it may have been mined between the two reads
            if mined is None:
                market.record_settlement_failed(meta, channel_id, retryable=True,
                                                reason=f"nonce {live['nonce']} used by another transaction")
                return
        else:
            client.broadcast(live["raw_tx"])  # the same bytes: same nonce, same hash
            mined = client.wait(live["tx_hash"], wait_s)
            if mined is None:
                raise Unavailable(f"settle transaction {live['tx_hash']} not mined yet")
    if mined.status == 1:
        market.confirm_settlement(meta, channel_id, tx_hash=live["tx_hash"], block_number=mined.block_number)
    else:
        market.record_settlement_failed(meta, channel_id, retryable=False,
                                        reason=f"settle transaction reverted in block {mined.block_number}")


def _reconcile(market: Any, client: SettleClient, meta: dict, settlement: Any) -> bool:
    """Before signing anew: if an earlier transaction of ours was mined after all, confirm it."""
    for submission in settlement.submissions:
        mined = client.receipt(submission["tx_hash"])
        if mined is not None and mined.status == 1:
            market.confirm_settlement(meta, settlement.channel_id, tx_hash=submission["tx_hash"],
                                      block_number=mined.block_number)
            return True
    return False


def sweep_settlements(runtime: Any, enqueue: Callable[[str], Any] | None = None) -> list[str]:
    """Close chain channels near expiry; enqueue every chain channel waiting for settlement."""
    market = runtime.market
    meta = Meta.system("settlement-sweep").as_dict()
    queued: list[str] = []
    for row in channels_due(runtime.views, market.now_s(), market.money.settle_margin_s):
        if row["rail"] != "chain":
            continue
        channel_id = row["channel_id"]
        channel = market.channel(channel_id)
        if channel.status in ("open", "pending"):
            market.expire_channel(meta, channel_id)  # nothing signed: settles internally
            channel = market.channel(channel_id)
        settlement = market.settlement(channel_id)
        if channel.status != "closing" or (settlement is not None and settlement.status == "failed"
                                           and not settlement.failure["retryable"]):
            continue
        queued.append(channel_id)
        (enqueue or (lambda cid: settle_channel(runtime, cid)))(channel_id)
    log.info("job.sweep_settlements", queued=len(queued))
    return queued


SETTLE_QUEUE = "settlements"
SETTLE_ACTOR = "settle_channel"


def settlement_sender(redis_url: str, namespace: str = "aimarket") -> Callable[[str], None]:
    """``send(channel_id)``: queue ``settle_channel`` from a process that does not run the
    actor (the API, when a buyer closes a channel); a worker host picks it up at once. The
    broker connects on the first send. The sweep remains the safety net if this is lost."""
    broker: RedisBroker | None = None

    def send(channel_id: str) -> None:
        nonlocal broker
        if broker is None:
            broker = RedisBroker(url=redis_url, namespace=namespace)
        broker.enqueue(dramatiq.Message(queue_name=SETTLE_QUEUE, actor_name=SETTLE_ACTOR, args=(channel_id,),
                                        kwargs={}, options={}))

    return send


class SettlementJobs:
    """The settlement actors on one broker (nothing is registered at import)."""

    def __init__(self, broker: dramatiq.Broker, runtime_factory: Callable[[], Any]) -> None:
        self._runtime_factory = runtime_factory
        self._runtime: Any = None
        # Unavailable (RPC down, not mined yet) raises: Dramatiq retries with backoff and
        # the next run resumes from the recorded Submitted. Everything else is recorded.
        self.settle_channel = dramatiq.actor(
            lambda channel_id: settle_channel(self.runtime, channel_id), broker=broker, actor_name=SETTLE_ACTOR,
            queue_name=SETTLE_QUEUE, max_retries=20, min_backoff=1_000, max_backoff=300_000,
            throws=(InvalidState,))
        self.sweep_settlements = dramatiq.actor(
            lambda: sweep_settlements(self.runtime, self.settle_channel.send), broker=broker,
            actor_name="sweep_settlements", queue_name=SETTLE_QUEUE, max_retries=3)

    @property
    def runtime(self) -> Any:
        if self._runtime is None:
            self._runtime = self._runtime_factory()
        return self._runtime


def _pause_from_env() -> Pause:
    stage_wanted = os.environ.get(PAUSE_ENV, "")

    def pause(stage: str) -> None:
        if stage == stage_wanted:
            print(f"paused:{stage}", flush=True)
            while True:  # a test SIGKILLs us here
                time.sleep(3600)

    return pause


def main(argv: list[str] | None = None) -> int:
    from ops.bootstrap import build_runtime
    from ops.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m workers.settlement", description=__doc__.split("\n")[0])
    parser.add_argument("--once", metavar="CHANNEL_ID", required=True, help="settle this channel and exit")
    args = parser.parse_args(argv)
    runtime = build_runtime(load_settings())
    try:
        status = settle_channel(runtime, args.once, pause=_pause_from_env())
        print(json.dumps(runtime.market.settlement(args.once).to_public()), flush=True)
    finally:
        runtime.close()
    return 0 if status == "confirmed" else 1


if __name__ == "__main__":
    sys.exit(main())
