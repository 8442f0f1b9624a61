"""A pool of worker processes (``node.compute.worker``) that run the callables, killable per call.

One call runs in one worker at a time. A call that must stop (its time limit, the buyer's
cancel, the session's end) kills its worker with SIGKILL, so the seller's code is really
stopped wherever it is, and a fresh worker takes the dead one's place. A worker that dies by
itself (a crash in the seller's code) fails its call. Calls wait for a free worker in order; at
most ``max_queue`` wait, after that :class:`~domain.model.errors.ComputeBusy` (free, retryable).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

from domain.model.errors import ComputeBusy
from node.compute.worker import frame

_U32 = struct.Struct(">I")
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended: ``ok``, ``failed``, ``timeout`` or ``cancelled``, with its output
    (``ok`` only), the metering count the worker read, an error code and detail, and its time."""

    kind: str
    output: bytes = b""
    count: int | None = None
    error: str | None = None
    detail: str = ""
    elapsed_ms: int = 0


ERRORS = {"timeout": "invoke_call_timeout", "cancelled": "invoke_call_cancelled", "failed": "invoke_call_failed"}


class Ticket:
    """One call's handle: :meth:`stop` ends it wherever it is (waiting for a worker or running)."""

    __slots__ = ("state", "waiter", "worker")

    def __init__(self) -> None:
        self.state: str | None = None
        self.waiter: asyncio.Future[_Worker] | None = None
        self.worker: _Worker | None = None

    def stop(self, why: str) -> None:
        """``why`` is ``timeout`` or ``cancelled``; the first reason wins."""
        if self.state is not None:
            return
        self.state = why
        if self.waiter is not None and not self.waiter.done():
            self.waiter.cancel()
        if self.worker is not None:
            self.worker.kill()


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None and proc.stdin is not None
        self.reader, self.writer = proc.stdout, proc.stdin

    async def read(self) -> tuple[dict[str, Any], bytes]:
        (total,) = _U32.unpack(await self.reader.readexactly(4))
        data = await self.reader.readexactly(total)
        (size,) = _U32.unpack_from(data)
        return orjson.loads(data[4 : 4 + size]), data[4 + size :]

    async def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self.writer.write(frame(header, body))
        if len(body) > 65536:
            await self.writer.drain()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class WorkerPool:
    """``size`` workers for the assets in ``specs`` (listing id → worker spec)."""

    def __init__(self, specs: dict[str, dict[str, Any]], *, size: int = 2, max_queue: int = 256,
                 python: str = sys.executable, env: dict[str, str] | None = None) -> None:
        if size < 1:
            raise ValueError("a pool has at least one worker")
        self.specs, self.size, self.max_queue, self.python, self.env = specs, size, max_queue, python, env
        self._idle: collections.deque[_Worker] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[_Worker]] = collections.deque()
        self._all: set[_Worker] = set()
        self._spawning: set[asyncio.Task[None]] = set()
        self._closed = False
        self.killed = 0  # workers stopped on purpose (timeouts, cancels), for tests and the bench

    async def start(self) -> None:
        """Start every worker; raises RuntimeError if one cannot load the assets."""
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for worker in workers:
            self._release(worker)

    async def _spawn(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "node.compute.worker", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=self.env if self.env is not None else dict(os.environ), limit=2**28)
        worker = _Worker(proc)
        self._all.add(worker)
        try:
            await worker.send({"op": "load", "assets": self.specs})
            await worker.writer.drain()
            header, _ = await asyncio.wait_for(worker.read(), READY_TIMEOUT_S)
            if not header.get("ready"):
                raise RuntimeError("the worker did not get ready")
        except (OSError, asyncio.IncompleteReadError, TimeoutError, RuntimeError) as exc:
            self._discard(worker)
            raise RuntimeError(f"a compute worker could not load the assets (see its stderr): {exc!r}") from exc
        return worker

    def _release(self, worker: _Worker) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        self._all.discard(worker)
        task = asyncio.get_running_loop().create_task(worker.proc.wait())
        self._spawning.add(task)  # type: ignore[arg-type]  # keep a reference until reaped
        task.add_done_callback(self._spawning.discard)

    def _replace(self, worker: _Worker) -> None:
        self._discard(worker)
        if not self._closed:
            task = asyncio.get_running_loop().create_task(self._respawn())
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    async def _respawn(self) -> None:
        delay_s = 0.5
        while not self._closed:
            try:
                self._release(await self._spawn())
                return
            except RuntimeError as exc:
                print(f'{{"compute": "worker_restart_failed", "detail": {str(exc)!r:.200}}}', file=sys.stderr)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 30.0)

    async def _acquire(self, ticket: Ticket) -> _Worker | None:
        if self._idle:
            return self._idle.popleft()
        if len(self._waiters) >= self.max_queue:
            raise ComputeBusy(f"{len(self._waiters)} calls are waiting for a worker; retry later")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        ticket.waiter = waiter
        try:
            return await waiter
        except asyncio.CancelledError:
            if ticket.state is None:
                raise
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())
            return None
        finally:
            ticket.waiter = None

    async def run(self, asset: str, body: bytes, *, timeout_s: float, ticket: Ticket) -> Outcome:
        """Run one call. Raises ComputeBusy when too many calls wait (nothing ran)."""
        if ticket.state is not None:
            return Outcome(ticket.state, error=ERRORS[ticket.state])
        worker = await self._acquire(ticket)
        if worker is None:
            return Outcome(ticket.state or "cancelled", error=ERRORS[ticket.state or "cancelled"])
        started = time.monotonic()
        ticket.worker = worker
        timer = asyncio.get_running_loop().call_later(timeout_s, ticket.stop, "timeout")
        try:
            await worker.send({"op": "call", "id": 0, "asset": asset}, body)
            header, output = await worker.read()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            kind = ticket.state or "failed"
            self.killed += ticket.state is not None
            self._replace(worker)
            detail = {"timeout": f"stopped after {timeout_s:g} s", "cancelled": "stopped on request",
                      "failed": "the worker process died"}[kind]
            return Outcome(kind, error=ERRORS[kind], detail=detail, elapsed_ms=int((time.monotonic() - started) * 1000))
        finally:
            timer.cancel()
            ticket.worker = None
        elapsed_ms = int((time.monotonic() - started) * 1000)
        if worker.proc.returncode is not None or ticket.state is not None:
            self._replace(worker)  # killed just after it answered: the answer stands, the process does not
        else:
            self._release(worker)
        if header.get("ok"):
            return Outcome("ok", output, header.get("count"), elapsed_ms=elapsed_ms)
        return Outcome("failed", error=str(header.get("error") or "invoke_call_failed"),
                       detail=str(header.get("detail") or "")[:256], elapsed_ms=elapsed_ms)

    async def close(self) -> None:
        self._closed = True
        for waiter in self._waiters:
            waiter.cancel()
        for task in list(self._spawning):
            task.cancel()
        for worker in list(self._all):
            worker.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.proc.wait(), 5.0)
        self._all.clear()
