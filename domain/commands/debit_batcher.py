"""Group commit for debits: many concurrent debit requests, one transaction.

Request threads validate what needs no channel state (body, seller, voucher signature) and
hand the debit to one batching thread per process. That thread gathers requests for at most
``window_s`` (or ``batch_max`` of them), applies them in arrival order to each touched
channel, and saves every touched channel in ONE ``save`` (one transaction, one commit).
Answers are released only after that commit, so an acknowledged debit is durable.

Channels stay cached between batches: a batch that loses an optimistic-concurrency race
(another process wrote one of its channels) evicts the touched channels and runs again on
fresh state, so two hosts can never both spend the same balance.

With a ``router`` (``ops.debit_routing``), each channel has one owning process: a debit
for another process's channel is checked here and then forwarded to its owner, so batches
of different processes never touch the same channel and the cached state stays current.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog
from eventsourcing.persistence import IntegrityError

from domain.channel import Channel
from domain.commands.money import check_idempotency_key, request_hash
from domain.errors import Conflict, MarketError, NotFound, error_from_wire

if TYPE_CHECKING:
    from domain.application import Marketplace

log = structlog.get_logger("debits")
BATCH_ATTEMPTS = 20
IDLE_EXIT_S = 5.0


@dataclass
class _Request:
    meta: dict
    channel_id: Any
    key: str
    digest: str
    body: dict[str, Any]
    future: Future = field(default_factory=Future)

    def to_wire(self) -> dict[str, Any]:
        return {"meta": self.meta, "channel_id": str(self.channel_id), "key": self.key, "digest": self.digest,
                "body": self.body}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> _Request:
        return cls(wire["meta"], UUID(wire["channel_id"]), wire["key"], wire["digest"], wire["body"])


class DebitBatcher:
    """Per-process group committer of debits (thread-safe ``submit``)."""

    def __init__(self, market: Marketplace, *, window_s: float = 0.002, batch_max: int = 512,
                 timeout_s: float = 30.0, router: Any = None) -> None:
        self.market = market
        self.router = router
        self.window_s = window_s
        self.batch_max = batch_max
        self.timeout_s = timeout_s
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._channels: dict[Any, Channel] = {}
        self._facts_cache: dict[str, Channel] = {}
        self.batches = 0
        self.commits = 0
        self.forward_fallbacks = 0
        self.conflicts = 0  # batches that lost a version race and re-ran on fresh state

    def submit(self, meta: dict, account_id: str, channel_id: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        """Debit as ``account_id``; returns the debit's answer once committed (or raises)."""
        market = self.market
        key = check_idempotency_key(key)
        normal = market.debit_body(body)
        channel = self._facts(account_id, channel_id)  # ownership, and the id parsed
        market.check_seller(normal["seller_account_id"])
        if channel.rail == "chain":
            market.wallet_of(normal["seller_account_id"])
            market.verify_debit_voucher(channel, normal["voucher"])
        request = _Request(meta, channel.id, key, request_hash(normal), normal)
        router = self.router
        if router is not None:
            if not router.started:
                router.start(self.accept_forwarded)
            owner = router.owner_of(str(channel.id))
            if owner != router.me:
                answer = router.forward(owner, request.to_wire())
                try:
                    reply = answer.result(timeout=router.forward_wait_s)
                except Exception:  # noqa: BLE001 - a timeout (owner gone) or the send failed (Redis down)
                    # Record it here: if the owner did record it, the key replays its answer.
                    self.forward_fallbacks += 1
                else:
                    if "error" in reply:
                        raise error_from_wire(reply["error"])
                    return reply["ok"]
        return self._enqueue(request).result(timeout=self.timeout_s)

    def accept_forwarded(self, wire: dict[str, Any]) -> Future:
        """A debit another process checked and forwarded here, its owner."""
        return self._enqueue(_Request.from_wire(wire))

    def _enqueue(self, request: _Request) -> Future:
        self._queue.put(request)
        self._ensure_thread()
        return request.future

    def _facts(self, account_id: str, channel_id: str) -> Channel:
        """The channel's immutable facts (buyer, rail, wallet, chain id), loaded once.

        Only fields fixed at open are read from this copy; balances come from the batch.
        """
        facts = self._facts_cache.get(channel_id)
        if facts is None:
            facts = self.market.channel(channel_id)
            if len(self._facts_cache) > 10_000:
                self._facts_cache.clear()
            self._facts_cache[channel_id] = facts
        if facts.buyer_account_id != account_id:
            raise NotFound("channel not found")
        return facts

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="debit-batcher", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            batch = [first]
            # Gather what arrives within the window: the cost of one commit is shared.
            deadline = _monotonic() + self.window_s
            while len(batch) < self.batch_max:
                remaining = deadline - _monotonic()
                try:
                    batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            self._process(batch)

    def _process(self, batch: list[_Request]) -> None:
        self.batches += 1
        for _attempt in range(BATCH_ATTEMPTS):
            try:
                outcomes = self._apply(batch)
            except IntegrityError:
                self.conflicts += 1
                self._evict({r.channel_id for r in batch})
                continue
            except Exception as exc:  # noqa: BLE001 - store down etc.: every waiter gets the error
                self._evict({r.channel_id for r in batch})
                log.warning("debits.batch_failed", error=repr(exc), size=len(batch))
                for r in batch:
                    r.future.set_exception(exc)
                return
            for request, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)
            return
        for r in batch:
            r.future.set_exception(Conflict("the channel changed concurrently; retry the request"))

    def _apply(self, batch: list[_Request]) -> list[Any]:
        market = self.market
        touched: dict[Any, Channel] = {}
        outcomes: list[Any] = []
        now_s = market.now_s()
        for r in batch:
            try:
                channel = touched.get(r.channel_id) or self._channel(r.channel_id)
                outcome: Any = channel.debit(
                    r.meta, key=r.key, request_hash=r.digest, amount_minor=r.body["amount_minor"],
                    seller_account_id=r.body["seller_account_id"], purpose=r.body["purpose"], now_s=now_s,
                    voucher=r.body["voucher"])
                touched[r.channel_id] = channel
            except MarketError as exc:
                outcome = exc
            outcomes.append(outcome)
        dirty = [c for c in touched.values() if c.pending_events]
        for channel in dirty:
            channel.check_invariants()
        if dirty:
            market.save(*dirty)  # ONE transaction for the whole batch
            self.commits += 1
        return outcomes

    def _channel(self, channel_id: Any) -> Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = self.market.channel(channel_id)
            if len(self._channels) > 10_000:
                self._channels.clear()
            self._channels[channel_id] = channel
        return channel

    def _evict(self, channel_ids: set[Any]) -> None:
        for channel_id in channel_ids:
            self._channels.pop(channel_id, None)


def _monotonic() -> float:
    import time

    return time.monotonic()
