"""One sequencer per channel: API processes route each debit to the process that owns it.

Group commit (``domain.app.debit_batcher``) pays off only if one process writes a
channel: when two processes both batch debits for the same channel, their commits race on
the channel's version and the loser re-reads the channel from the store. So every API
process that takes debits joins a membership set in Redis (a heartbeat every second), and
the owner of a channel is chosen by rendezvous hashing over the live members: every process
computes the same owner without talking to the others, and a member that joins or leaves
moves only its own share of channels.

A process that receives a debit for a channel it does not own forwards it (already checked:
body, ownership, seller, voucher) to the owner's inbox list and waits for the answer on its
own reply list. Lists are drained in bulk and written in pipelines, so a busy process pays
about one Redis round trip per batch, not per debit.

Correctness never depends on this routing: the event store's version check is still what
stops two writers, and the idempotency key in the channel's state is what makes a debit
delivered twice harmless. That is what lets the failure path be simple: if the owner does
not answer within ``forward_wait_s`` (dead, partitioned, or Redis down) the process records
the debit itself; if the owner did record it meanwhile, the key returns the same answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import redis
import structlog

log = structlog.get_logger("debit_routing")
REPLY_LIST_TTL_S = 60  # a reply list of a process that died is dropped by Redis
DRAIN_MAX = 512


class RedisDebitRouter:
    """Membership, ownership and the forward/answer lists of one API process."""

    def __init__(self, redis_url: str, namespace: str, *, heartbeat_s: float = 1.0, member_ttl_s: float = 5.0,
                 forward_wait_s: float = 2.0) -> None:
        self.redis_url = redis_url
        self.namespace = namespace
        self.heartbeat_s = heartbeat_s
        self.member_ttl_s = member_ttl_s
        self.forward_wait_s = forward_wait_s
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._members_key = f"{namespace}:debit-members"
        self._inbox = self._inbox_of(self.me)
        self._replies = f"{namespace}:debit-replies:{self.me}"
        self._members: tuple[str, ...] = (self.me,)
        self._members_fresh_until = 0.0
        self._owners: dict[str, str] = {}
        self._pending: dict[str, Future] = {}
        self._outbox: queue.Queue[tuple[str, str, Future | None]] = queue.Queue()
        self._deliver: Callable[[dict[str, Any]], Future] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.forwarded = 0
        self.served = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, deliver: Callable[[dict[str, Any]], Future]) -> RedisDebitRouter:
        """Join the members and serve the inbox with ``deliver`` (idempotent)."""
        with self._lock:
            if self._threads:
                return self
            self._deliver = deliver
            self._client = redis.Redis.from_url(self.redis_url, socket_timeout=self.heartbeat_s * 5 + 5)
            self._heartbeat()
            for target, name in ((self._listen, "debit-router-listen"), (self._send, "debit-router-send")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    @property
    def started(self) -> bool:
        return bool(self._threads)

    def close(self) -> None:
        """Leave the members (owners move at once) and stop the threads."""
        self._stop.set()
        with self._lock:
            threads, self._threads = self._threads, []
        if not threads:
            return
        try:
            self._client.zrem(self._members_key, self.me)
        except redis.RedisError:
            pass
        self._outbox.put(("", "", None))
        for thread in threads:
            thread.join(timeout=self.heartbeat_s * 3)
        self._client.close()

    # -- ownership -------------------------------------------------------------------------
    def owner_of(self, channel_id: str) -> str:
        """The member that sequences ``channel_id`` (this process if membership is stale)."""
        if time.monotonic() > self._members_fresh_until:
            return self.me
        owner = self._owners.get(channel_id)
        if owner is None:
            owner = max(self._members, key=lambda m: _score(m, channel_id))
            if len(self._owners) > 100_000:
                self._owners.clear()
            self._owners[channel_id] = owner
        return owner

    def _heartbeat(self) -> None:
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        pipe.zadd(self._members_key, {self.me: now})
        pipe.zremrangebyscore(self._members_key, "-inf", now - self.member_ttl_s)
        pipe.zrange(self._members_key, 0, -1)
        members = tuple(sorted(m.decode() for m in pipe.execute()[2]))
        if members != self._members:
            log.info("debit_routing.members", members=len(members), me=self.me)
            self._owners = {}
            self._members = members
        self._members_fresh_until = time.monotonic() + self.member_ttl_s - self.heartbeat_s

    # -- forwarding (the receiving side of a debit) ------------------------------------------
    def forward(self, owner: str, message: dict[str, Any]) -> Future:
        """Send ``message`` to ``owner``; the future gets the owner's answer (a dict)."""
        tag = uuid.uuid4().hex
        future: Future = Future()
        self._pending[tag] = future
        future.add_done_callback(lambda _f: self._pending.pop(tag, None))
        wire = {**message, "tag": tag, "from": self.me, "deadline": time.time() + self.forward_wait_s}
        self.forwarded += 1
        self._outbox.put((self._inbox_of(owner), json.dumps(wire), future))
        return future

    def _inbox_of(self, member: str) -> str:
        return f"{self.namespace}:debit-inbox:{member}"

    # -- threads -----------------------------------------------------------------------------
    def _listen(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_s
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_beat:
                    self._heartbeat()
                    next_beat = time.monotonic() + self.heartbeat_s
                first = self._client.blpop([self._inbox, self._replies], timeout=self.heartbeat_s)
                if first is None:
                    continue
                self._handle(first[0].decode(), [first[1]])
                pipe = self._client.pipeline(transaction=False)
                pipe.lpop(self._inbox, DRAIN_MAX)
                pipe.lpop(self._replies, DRAIN_MAX)
                inbox, replies = pipe.execute()
                self._handle(self._inbox, inbox or [])
                self._handle(self._replies, replies or [])
            except redis.RedisError as exc:
                log.warning("debit_routing.redis_error", error=repr(exc))
                self._stop.wait(self.heartbeat_s)
            except Exception as exc:  # noqa: BLE001 - keep serving; one bad message must not stop routing
                log.error("debit_routing.listen_failed", error=repr(exc))

    def _handle(self, key: str, raw_items: list[bytes]) -> None:
        for raw in raw_items:
            item = json.loads(raw)
            if key == self._replies:
                future = self._pending.get(item["tag"])
                if future is not None and not future.done():
                    future.set_result(item)
            elif item["deadline"] > time.time():  # past it, the sender already decided
                self.served += 1
                assert self._deliver is not None
                done = self._deliver(item)
                done.add_done_callback(lambda f, m=item: self._answer(m, f))

    def _answer(self, message: dict[str, Any], done: Future) -> None:
        from domain.model.errors import error_to_wire

        exc = done.exception()
        reply = {"tag": message["tag"], **({"error": error_to_wire(exc)} if exc else {"ok": done.result()})}
        self._outbox.put((f"{self.namespace}:debit-replies:{message['from']}", json.dumps(reply), None))

    def _send(self) -> None:
        """Write queued messages, grouped per list, one pipeline per drain."""
        while not self._stop.is_set():
            items = [self._outbox.get()]
            while len(items) < DRAIN_MAX:
                try:
                    items.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            grouped: dict[str, list[str]] = {}
            waiting: list[Future] = []
            for key, payload, future in items:
                if key:
                    grouped.setdefault(key, []).append(payload)
                    if future is not None:
                        waiting.append(future)
            if not grouped:
                continue
            try:
                pipe = self._client.pipeline(transaction=False)
                for key, payloads in grouped.items():
                    pipe.rpush(key, *payloads)
                    pipe.expire(key, REPLY_LIST_TTL_S)
                pipe.execute()
            except redis.RedisError as exc:
                log.warning("debit_routing.send_failed", error=repr(exc), messages=len(items))
                for future in waiting:  # their senders record the debits themselves
                    if not future.done():
                        future.set_exception(exc)


def _score(member: str, channel_id: str) -> bytes:
    return hashlib.blake2b(f"{member}|{channel_id}".encode(), digest_size=8).digest()
