"""One buyer connection of a compute session: calls in, outputs and receipts out.

Per call: the input arrives in ``call`` chunks (call ids increase within a connection; one input
is sent whole before the next), then the checks that cost nothing when they refuse (session
open, concurrency, byte limits, the safety pre-check, the budget and the cap rule), then the run
in a worker, then the receipt: signed, **committed**, and only then sent with the output. A
call ends billed only if the worker answered with a valid output; a failure, a time-out, a
cancel or the buyer going away ends it unbilled, with a receipt that says so.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

from domain.model import compute as cm
from domain.model import frames as fr
from domain.model.compute import measure_units
from domain.model.errors import (
    BudgetExhausted,
    ComputeBusy,
    InvokeCountersignatureRequired,
    InvokeIdleTimeout,
    InvokeLimitReached,
    InvokeMessageInvalid,
    MarketError,
    Unavailable,
)
from domain.model.invoke_handshake import InvokeConnection
from domain.model.invoke_receipts import decode, issue_rejection
from domain.model.jcs import canonical_json, loads_strict, sha256_sri
from domain.model.keys import b64url
from node.compute.session import Session, nonce
from node.compute.store import op_outbox
from node.compute.wire import Sender, problem, read_record
from node.compute.workers import Outcome, Ticket

if TYPE_CHECKING:
    from node.compute.server import ComputeServer

REJECTION_REPEAT_MS = 60_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Connection:
    """A connection to one session (``session`` None: the listing is served bare, for the bench)."""

    def __init__(self, server: ComputeServer, session: Session | None, conn: InvokeConnection,
                 reader: asyncio.StreamReader, sender: Sender, opener: fr.FrameOpener, listing_id: str) -> None:
        self.server, self.session, self.conn = server, session, conn
        self.reader, self.sender, self.opener = reader, sender, opener
        self.listing_id = listing_id
        self.asset = server.assets[listing_id]
        self.connection_id = b64url(conn.connection_id)
        self.jkt = conn.claims.cnf_jkt
        self.tickets: dict[int, Ticket] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._assembling: tuple[int, list[bytes], int] | None = None
        self._last_call = 0
        self.finished = asyncio.Event()

    # -- the read loop --------------------------------------------------------------------------
    async def run(self) -> None:
        cfg = self.server.config
        state = self.session.state_message(self.conn.last_seq) if self.session else {"metered": False}
        self.sender.json(cm.STATE, 0, state)
        try:
            while not self.finished.is_set():
                timeout = None if self.tickets else cfg.idle_timeout_s
                try:
                    record = await read_record(self.reader, self.opener, timeout)
                except TimeoutError:
                    self.sender.error(InvokeIdleTimeout(f"no call for {cfg.idle_timeout_s:g} s; the session stays open"))
                    return
                if record.type == fr.END:
                    await self._close(record)
                    return
                if record.type != fr.DATA:
                    raise InvokeMessageInvalid(f"unexpected {record.name} from the buyer")
                await self._message(cm.unpack_message(record.payload, allowed=cm.FROM_BUYER))
                await self.sender.drain(cfg.idle_timeout_s)
        finally:
            await self.stop_calls()

    async def stop_calls(self) -> None:
        """Stop every running call (unbilled) and wait for their receipts to go out."""
        for ticket in list(self.tickets.values()):
            ticket.stop("cancelled")
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _message(self, message: cm.Message) -> None:
        if message.kind == cm.CALL:
            self._chunk(message)
        elif message.kind == cm.CANCEL:
            ticket = self.tickets.get(message.call)
            if ticket is not None:
                ticket.stop("cancelled")
        elif self.session is not None:
            await self._countersign(message.body)

    def _chunk(self, message: cm.Message) -> None:
        if self._assembling is None:
            if message.call <= self._last_call:
                raise InvokeMessageInvalid("call ids increase within a connection")
            self._assembling, self._last_call = (message.call, [], 0), message.call
        call, parts, size = self._assembling
        if message.call != call:
            raise InvokeMessageInvalid("one call's input is sent whole before the next")
        size += len(message.body)
        if size <= self.asset.manifest.max_input_bytes + 1:  # past the limit: counted, not kept
            parts.append(message.body)
        self._assembling = (call, parts, size)
        if message.last:
            self._assembling = None
            self._dispatch(call, b"".join(parts), size)

    # -- admission --------------------------------------------------------------------------
    def _refuse(self, call: int, exc: MarketError) -> None:
        self.sender.json(cm.REFUSAL, call, loads_strict(problem(exc)))

    def _dispatch(self, call: int, data: bytes, size: int) -> None:
        server, session, now = self.server, self.session, wall_ms()
        if session is not None:
            try:
                session.check_limits(size)
            except InvokeLimitReached as exc:
                self._refuse(call, exc)
                server.schedule_finalize(session, "limit")
                return
            except MarketError as exc:
                self._refuse(call, exc)
                return
        if session is None:  # bare (the benchmark's baseline): only the size limit
            if len(data) != size:
                self._refuse(call, InvokeLimitReached("the input is over the asset's size limit"))
                return
            refusal = None
        else:
            refusal = server.safety.check(self.listing_id, self.asset.manifest, self.jkt, data, size, now)[0]
        if refusal is not None:
            self._reject(call, data if len(data) == size else None, refusal.rule, refusal.code, refusal.detail, now)
            return
        if session is not None:
            try:
                session.admit(call, size)
            except (BudgetExhausted, InvokeCountersignatureRequired) as exc:
                self._refuse(call, exc)
                return
            session.count_input(size)
        ticket = Ticket()
        self.tickets[call] = ticket
        task = asyncio.get_running_loop().create_task(self._run(call, data, ticket, now))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _reject(self, call: int, data: bytes | None, rule: str, code: str, detail: str, now: int) -> None:
        claims = self.conn.claims
        subject = {"invocation_id": claims.sub, "jti": claims.jti, "device_id": claims.aud,
                   "listing_id": claims.listing_id, "buyer_jkt": self.jkt, "connection": self.connection_id,
                   "call": call, "rule": rule[:256], "code": code, "detail": detail, "amount_minor": 0,
                   "input_hash": sha256_sri(data) if data is not None else None, "at_ms": now}
        rejection = issue_rejection(subject, self.server.signer_for(claims), now_ms=now, nonce=nonce())
        self.sender.json(cm.REJECTION, call, rejection)
        if self.server.note_rejection(claims.jti, rule, now):
            self.server.store.commit(op_outbox("invoke_rejection", {"rejection": rejection}, now))

    # -- running ----------------------------------------------------------------------------
    async def _run(self, call: int, data: bytes, ticket: Ticket, started_ms: int) -> None:
        manifest = self.asset.manifest
        timeout_s = min(manifest.timeout_ms / 1000, self.server.config.max_call_s)
        try:
            outcome = await self.server.pool.run(self.listing_id, data, timeout_s=timeout_s, ticket=ticket)
        except ComputeBusy as exc:
            self.tickets.pop(call, None)
            if self.session is not None:
                self.session.in_flight.pop(call, None)
            self._refuse(call, exc)
            return
        try:
            if self.session is None:
                self._bare_answer(call, outcome)
            else:
                await self._metered_answer(call, data, outcome, started_ms)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the buyer waiting: refuse, bill nothing
            print(f'{{"compute": "call_error", "error": {type(exc).__name__!r}}}', file=sys.stderr)
            if self.session is not None:
                self.session.broken = True  # its counters may be ahead of the store: reload them
            self._refuse(call, Unavailable("the node failed to answer this call; it is not billed"))
            self.finished.set()
        finally:
            self.tickets.pop(call, None)

    def _bare_answer(self, call: int, outcome: Outcome) -> None:
        if outcome.kind == "ok":
            self.sender.chunks(cm.OUTPUT, call, outcome.output)
        else:
            self.sender.json(cm.REFUSAL, call, {"code": outcome.error, "detail": outcome.detail, "status": 502,
                                                "extra": {}})

    def _units(self, outcome: Outcome, input_bytes: int) -> tuple[Outcome, int]:
        session = self.session
        assert session is not None
        if outcome.kind != "ok":
            return outcome, 0
        if session.row.bytes_out + len(outcome.output) > session.max_bytes_out:
            return Outcome("failed", error=InvokeLimitReached.code, detail="the session's output bytes are used up",
                           elapsed_ms=outcome.elapsed_ms), 0
        try:
            units = measure_units(self.asset.manifest.metering, input_bytes=input_bytes,
                                  output_bytes=len(outcome.output), elapsed_ms=outcome.elapsed_ms,
                                  counted=outcome.count)
        except ValueError as exc:
            return Outcome("failed", error="invoke_output_invalid", detail=str(exc)[:256],
                           elapsed_ms=outcome.elapsed_ms), 0
        return outcome, min(units, session.claims.max_call_units)

    async def _metered_answer(self, call: int, data: bytes, outcome: Outcome, started_ms: int) -> None:
        session = self.session
        assert session is not None
        outcome, units = self._units(outcome, len(data))
        ended_ms = max(wall_ms(), started_ms)
        _, wire, op = session.call_receipt(
            connection=self.connection_id, call=call, outcome=outcome.kind, units=units, error=outcome.error,
            input_hash=sha256_sri(data), output_hash=sha256_sri(outcome.output) if outcome.kind == "ok" else None,
            input_bytes=len(data), output_bytes=len(outcome.output), started_ms=started_ms, ended_ms=ended_ms,
            now_ms=ended_ms)
        try:
            await self.server.store.commit(op)
        except Exception as exc:  # noqa: BLE001 - the disk failed: nothing unsaved may leave the node
            session.broken = True
            self.sender.error(Unavailable(f"the node could not save a receipt: {type(exc).__name__}"))
            self.finished.set()
            return
        if outcome.kind == "ok":
            self.sender.chunks(cm.OUTPUT, call, outcome.output)
        self.sender.message(cm.RECEIPT, call, wire)
        self.server.after_call(session)

    # -- countersignatures and the end ----------------------------------------------------------
    async def _countersign(self, body: bytes) -> None:
        session = self.session
        assert session is not None
        try:
            op = session.countersign(decode(body), self.conn.buyer_key,
                                     lambda seq: self.server.store.receipt(session.claims.jti, seq))
        except MarketError as exc:
            self._refuse(0, exc)
            return
        if op is not None:
            self.server.store.commit(op)  # the node's own risk if it is lost: no need to wait
            self.server.after_call(session)

    async def _close(self, record: fr.Record) -> None:
        """The buyer's ``end``: ``{"countersignature": vc | null}``, then the final receipt."""
        body: Any = record.json()
        if not isinstance(body, dict) or set(body) != {"countersignature"}:
            raise InvokeMessageInvalid("the buyer's end is {countersignature}")
        if self.session is None:
            self.sender.end(canonical_json({"metered": False}))
            return
        if body["countersignature"] is not None:
            await self._countersign(canonical_json(body["countersignature"]))
        await self.stop_calls()
        await self.server.finalize(self.session, "closed")
