"""Group commit for debits and purchases: many concurrent requests, one transaction.

The API process's event loop is the sequencer. A debit request is checked where no channel
state is needed (body, ownership, seller, voucher signature) and queued; the loop gathers
what arrives within ``window_s`` (at most ``batch_max``), applies the batch in arrival order
to each touched channel and saves every touched channel in ONE transaction. Answers are
released only after that commit, so an acknowledged debit is durable. Batches are applied
and saved one after the other; while a save waits for the store, the loop keeps taking
requests for the next batch.

How a batch is saved is the ``saver``'s business: on PostgreSQL an asyncio connection
(``ops.adapters.postgres_async``), so the loop never blocks on the database; by default the
application's own ``save`` on one side thread (the embedded SQLite store, whose writers may
wait on a file lock held by another process).

Channels stay cached between batches: a batch that loses an optimistic-concurrency race
(another process wrote one of its channels) evicts the touched channels and runs again on
fresh state, so two hosts can never both spend the same balance.

With a ``router`` (``ops.adapters.redis_routing``), each channel has one owning process: a debit
for another process's channel is checked here and then forwarded to its owner, so batches
of different processes never touch the same channel and the cached state stays current.

A purchase (``domain.app.purchases``) is a batch item like a debit: checked, routed to the
channel's owner, applied in arrival order (the channel's debit and the new ``Purchase`` with
its token) and saved in the batch's one transaction. Its listing and device are read from
caches; the saver checks in that transaction that they are still the versions read
(``domain.model.ports.StaleRead``), else the batch runs again on fresh state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog
from eventsourcing.persistence import IntegrityError

from domain.app.money import check_idempotency_key, request_hash
from domain.app.purchases import BatchReads
from domain.model.channel import Channel
from domain.model.errors import Conflict, MarketError, NotFound, Unavailable, error_from_wire
from domain.model.ports import StaleRead
from domain.model.purchase import purchase_id_for

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.ports import BatchSaver, DebitRouter

log = structlog.get_logger("debits")
BATCH_ATTEMPTS = 20
CACHE_MAX = 10_000


@dataclass
class _Request:
    meta: dict
    channel_id: Any
    key: str
    digest: str
    body: dict[str, Any]
    kind: str = "debit"  # or "purchase"
    account_id: str = ""  # purchases: the buyer (the purchase id derives from it and the key)
    purchase_id: UUID | None = None
    future: Any = field(default=None)  # an asyncio future of the loop that queued it

    def to_wire(self) -> dict[str, Any]:
        wire = {"meta": self.meta, "channel_id": str(self.channel_id), "key": self.key, "digest": self.digest,
                "body": self.body}
        if self.kind != "debit":
            wire |= {"kind": self.kind, "account_id": self.account_id, "purchase_id": str(self.purchase_id)}
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> _Request:
        purchase_id = wire.get("purchase_id")
        return cls(wire["meta"], UUID(wire["channel_id"]), wire["key"], wire["digest"], wire["body"],
                   wire.get("kind", "debit"), wire.get("account_id", ""), UUID(purchase_id) if purchase_id else None)


class DebitBatcher:
    """Per-process group committer of debits, driven by the process's event loop."""

    def __init__(self, market: Marketplace, *, window_s: float = 0.002, batch_max: int = 512,
                 router: DebitRouter | None = None, saver: BatchSaver | None = None) -> None:
        self.market = market
        self.router = router
        self.window_s = window_s
        self.batch_max = batch_max
        self._executor: ThreadPoolExecutor | None = None
        self.saver = saver or self._save_on_thread
        self._pending: list[_Request] = []
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channels: dict[Any, Channel] = {}
        self._facts_cache: dict[str, Channel] = {}
        self.batches = 0
        self.commits = 0
        self.forward_fallbacks = 0
        self.conflicts = 0  # batches that lost a version race and re-ran on fresh state

    # -- taking a debit ---------------------------------------------------------------------
    async def submit(self, meta: dict, account_id: str, channel_id: str, key: str,
                     body: dict[str, Any]) -> dict[str, Any]:
        """Debit as ``account_id``; returns the debit's answer once committed (or raises)."""
        return await self._route(self.check(meta, account_id, channel_id, key, body))

    async def submit_purchase(self, meta: dict, account_id: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        """Buy as ``account_id`` (``domain.app.purchases``); the purchase's answer once committed."""
        request = self.check_purchase(meta, account_id, key, body)
        replayed = self.market.purchases.recent_answer(request.purchase_id, request.digest)
        return replayed if replayed is not None else await self._route(request)

    async def _route(self, request: _Request) -> dict[str, Any]:
        router = self.router
        if router is not None:
            if not router.started:
                self.join_routing()
            owner = router.owner_of(str(request.channel_id))
            if owner != router.me:
                try:
                    reply = await asyncio.wait_for(asyncio.wrap_future(router.forward(owner, request.to_wire())),
                                                   router.forward_wait_s)
                except Exception:  # noqa: BLE001 - a timeout (owner gone) or the send failed (Redis down)
                    # Record it here: if the owner did record it, the key replays its answer.
                    self.forward_fallbacks += 1
                else:
                    if "error" in reply:
                        raise error_from_wire(reply["error"])
                    return reply["ok"]
        return await self._enqueue(request)

    def check(self, meta: dict, account_id: str, channel_id: str, key: str, body: dict[str, Any]) -> _Request:
        """Everything that needs no channel balance; reads the store only on a cold cache."""
        market = self.market
        key = check_idempotency_key(key)
        normal = market.money.debit_body(body)
        channel = self._facts(account_id, channel_id)  # ownership, and the id parsed
        market.money.check_seller(normal["seller_account_id"], buyer_account_id=channel.buyer_account_id)
        if channel.rail == "chain":
            market.money.wallet_of(normal["seller_account_id"])
            market.money.verify_debit_voucher(channel, normal["voucher"])
        return _Request(meta, channel.id, key, request_hash(normal), normal)

    def check_purchase(self, meta: dict, account_id: str, key: str, body: dict[str, Any]) -> _Request:
        """A purchase's checks that need no channel balance (``PurchaseService.precheck``)."""
        purchases = self.market.purchases
        key = check_idempotency_key(key)
        normal = purchases.purchase_body(body)
        channel = self._facts(account_id, normal["channel_id"])
        purchases.precheck(account_id, normal, channel)
        return _Request(meta, channel.id, key, request_hash(normal), normal, "purchase", account_id,
                        purchase_id_for(account_id, key))

    def join_routing(self) -> None:
        """Join the routing members and take forwarded debits on the running loop (done on
        the first debit this process takes: a process that takes none owns none)."""
        self._loop = asyncio.get_running_loop()
        self.router.start(self.accept_forwarded)

    def accept_forwarded(self, wire: dict[str, Any]) -> concurrent.futures.Future:
        """A debit another process checked and forwarded here, its owner (called from the
        router's thread): queued on this process's loop; the future gets its answer."""
        answer: concurrent.futures.Future = concurrent.futures.Future()
        loop = self._loop

        def enqueue() -> None:
            queued = self._enqueue(_Request.from_wire(wire))
            queued.add_done_callback(lambda f: _settle(answer, f))

        try:
            if loop is None:
                raise RuntimeError("no debit taken yet")
            loop.call_soon_threadsafe(enqueue)
        except RuntimeError:  # no loop yet, or it closed: the sender records the debit itself
            answer.set_exception(Unavailable("this process is not taking debits"))
        return answer

    def _enqueue(self, request: _Request) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._pending = [r for r in self._pending if r.future.get_loop() is loop]
        request.future = loop.create_future()
        self._pending.append(request)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return request.future

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(self.window_s)  # gather: the cost of one commit is shared
            batch, self._pending = self._pending[:self.batch_max], self._pending[self.batch_max:]
            outcomes = await self._commit(batch)
            for request, outcome in zip(batch, outcomes, strict=True):
                if request.future.done():  # the client went away; its debit stands
                    continue
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)

    # -- the batch --------------------------------------------------------------------------
    async def _commit(self, batch: list[_Request]) -> list[Any]:
        """Apply and save the batch; one outcome (answer or error) per request."""
        self.batches += 1
        for _attempt in range(BATCH_ATTEMPTS):
            try:
                outcomes, dirty, reads = self._apply(batch)
                if dirty:
                    # ONE transaction for the whole batch (with purchases: checking what it read)
                    await (self.saver(dirty, reads.versions) if reads.versions else self.saver(dirty))
                    self.commits += 1
                if reads.created:
                    self.market.purchases.committed(list(reads.created.values()))
                return outcomes
            except IntegrityError:
                self.conflicts += 1
                self._evict({r.channel_id for r in batch})
            except StaleRead as stale:  # a listing or device changed, or a purchase exists
                self.conflicts += 1
                self._evict({r.channel_id for r in batch})
                self.market.purchases.stale(stale.ids)
            except Exception as exc:  # noqa: BLE001 - store down etc.: every waiter gets the error
                self._evict({r.channel_id for r in batch})
                log.warning("debits.batch_failed", error=repr(exc), size=len(batch))
                if not isinstance(exc, MarketError):  # nothing was recorded: a retry is safe (same key)
                    exc = Unavailable("the batch could not be recorded; retry the request with its Idempotency-Key")
                return [exc] * len(batch)
        return [Conflict("the channel changed concurrently; retry the request")] * len(batch)

    def _apply(self, batch: list[_Request]) -> tuple[list[Any], list[Any], BatchReads]:
        """Each request on its channel, in arrival order: the outcomes, the aggregates changed
        or created, and what purchases read."""
        touched: dict[Any, Channel] = {}
        reads = BatchReads()
        outcomes: list[Any] = []
        now_s = self.market.now_s()
        for r in batch:
            try:
                channel = touched.get(r.channel_id) or self._channel(r.channel_id)
                if r.kind == "purchase":
                    outcome: Any = self.market.purchases.apply(
                        r.meta, account_id=r.account_id, purchase_id=r.purchase_id, key=r.key, digest=r.digest,
                        body=r.body, channel=channel, now_s=now_s, reads=reads)
                else:
                    outcome = channel.debit(
                        r.meta, key=r.key, request_hash=r.digest, amount_minor=r.body["amount_minor"],
                        seller_account_id=r.body["seller_account_id"], purpose=r.body["purpose"], now_s=now_s,
                        voucher=r.body["voucher"])
                touched[r.channel_id] = channel
            except MarketError as exc:
                outcome = exc
            outcomes.append(outcome)
        dirty: list[Any] = [c for c in touched.values() if c.pending_events]
        for channel in dirty:
            channel.check_invariants()
        return outcomes, dirty + list(reads.created.values()), reads

    async def _save_on_thread(self, aggregates: list[Any], reads: dict[Any, int | None] | None = None) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="debit-commit")

        def save() -> None:
            if reads:
                self._check_reads(reads)
            self.market.save(*aggregates)

        await asyncio.get_running_loop().run_in_executor(self._executor, save)

    def _check_reads(self, reads: dict[Any, int | None]) -> None:
        """The embedded store's check of what a batch read: just before its save, not in the
        save's transaction (SQLite has one writer host; a change between the two is a race
        of microseconds the store's version check does not see, accepted there)."""
        recorder = self.market.recorder
        stale = []
        for aggregate_id, version in reads.items():
            last = recorder.select_events(aggregate_id, desc=True, limit=1)
            if (last[0].originator_version if last else None) != version:
                stale.append(aggregate_id)
        if stale:
            raise StaleRead(stale)

    # -- caches -----------------------------------------------------------------------------
    def _facts(self, account_id: str, channel_id: str) -> Channel:
        """The channel's immutable facts (buyer, rail, wallet, chain id), loaded once.

        Only fields fixed at open are read from this copy; balances come from the batch.
        """
        facts = self._cached(self._facts_cache, channel_id)
        if facts.buyer_account_id != account_id:
            raise NotFound("channel not found")
        return facts

    def _channel(self, channel_id: Any) -> Channel:
        return self._cached(self._channels, channel_id)

    def _cached(self, cache: dict[Any, Channel], channel_id: Any) -> Channel:
        channel = cache.get(channel_id)
        if channel is None:
            channel = self.market.money.channel(channel_id)
            if len(cache) > CACHE_MAX:
                cache.clear()
            cache[channel_id] = channel
        return channel

    def _evict(self, channel_ids: set[Any]) -> None:
        for channel_id in channel_ids:
            self._channels.pop(channel_id, None)

    def close(self) -> None:
        if self.router is not None:
            self.router.close()
        close_saver = getattr(self.saver, "close", None)
        if close_saver is not None:
            close_saver()
        if self._executor is not None:
            self._executor.shutdown(wait=False)


def _settle(answer: concurrent.futures.Future, done: asyncio.Future) -> None:
    if done.cancelled():
        answer.cancel()
    elif done.exception() is not None:
        answer.set_exception(done.exception())
    else:
        answer.set_result(done.result())
