"""The buyer's side of a compute session: ``aim-node compute invoke`` and these calls for other code.

    with open_session(token, buyer_key, hub_keys) as session:
        result = session.invoke({"texts": ["hello"]})      # InvokeResult(output, receipt, units, amount_minor)
        final = session.close()                           # the node's final receipt

One connection, many calls (up to the session's concurrency), no hub round trip per call. Each
receipt is verified as it arrives (``domain.model.invoke_receipts.verify_receipt``: the seller's
key from the hub-signed token, the unit price, the session, ``seq``, the budget, and the output's
hash); the client countersigns the latest receipt whenever the cap rule needs it before the next
call (``countersign="lazy"``, the default) or after every receipt (``"every"``), and at close.
Every refusal is raised as the ``domain.model.errors`` class of its stable code:
``BudgetExhausted`` (``extra["amount_needed_minor"]``), ``InvokeInputRejected`` and
``InvokeRateLimited`` (``.rejection``: the node-signed rejection), ``InvokeCallFailed``,
``InvokeCallTimeout``, ``InvokeCallCancelled``, ``InvokeOutputInvalid`` (``.receipt``: the
unbilled receipt), ``ComputeBusy``, ``InvokeConcurrencyExceeded``, ``InvokeSessionClosed``,
``InvokeTokenExpired``, ... and a receipt that does not verify as ``InvokeReceiptTampered``,
``InvokeUnitPriceChanged``, ``InvokeReceiptReplayed``, ``InvokeOverBudget`` (the session stops).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from domain.model import compute as cm
from domain.model import frames as fr
from domain.model.errors import (
    InvalidInput,
    InvokeCallCancelled,
    InvokeReceiptInvalid,
    InvokeSessionClosed,
    MarketError,
    StreamTruncated,
    error_from_wire,
)
from domain.model.invoke import InvokeClaims, verify_invoke_token
from domain.model.invoke_handshake import InvokeClientHandshake
from domain.model.invoke_receipts import decode, encode, issue_countersignature, verify_receipt, verify_rejection
from domain.model.jcs import canonical_json, loads_strict, sha256_sri
from domain.model.keys import KxPrivateKey, SigningKey, VerifyKey, b64url
from node.compute.wire import Refused, Sender, expect_plain, read_record

__all__ = ["AsyncInvokeSession", "InvokeResult", "InvokeSession", "open_session", "open_session_async"]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class InvokeResult:
    """One successful call: its output, the node's receipt for it (None when served bare), and
    what it was billed."""

    output: Any
    receipt: dict[str, Any] | None
    units: int
    amount_minor: int
    call: int


def refusal(wire: Mapping[str, Any], **attached: Any) -> MarketError:
    """The typed exception for a refusal ``{"code","detail","extra"}``, with ``attached`` set on it."""
    exc = error_from_wire({"code": wire.get("code"), "detail": wire.get("detail"), "extra": wire.get("extra") or {}})
    for name, value in attached.items():
        setattr(exc, name, value)
    return exc


class _Call:
    __slots__ = ("call", "cancelled", "future", "input_hash", "output")

    def __init__(self, future: asyncio.Future[InvokeResult]) -> None:
        self.future, self.call, self.cancelled, self.output, self.input_hash = future, 0, False, [], ""


def _endpoint(claims: InvokeClaims, seller: str | None) -> tuple[str, int]:
    text = seller or claims.raw.get("endpoint")
    if not text:
        raise InvalidInput("the token names no endpoint: give seller='host:port'")
    rest = text.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


class AsyncInvokeSession:
    """A connected session (asyncio). Build it with :func:`open_session_async`."""

    def __init__(self, claims: InvokeClaims, key: SigningKey, countersign: str) -> None:
        if countersign not in ("lazy", "every"):
            raise InvalidInput("countersign is 'lazy' or 'every'")
        self.claims, self.key, self.countersign_policy = claims, key, countersign
        self.metered = True
        self.last_receipt: dict[str, Any] | None = None  # the latest verified receipt (credential)
        self.countersigned_minor = 0
        self.countersigned_seq = 0
        self.final_receipt: dict[str, Any] | None = None
        self.failure: MarketError | None = None
        self._calls: dict[int, _Call] = {}
        self._next_call = 0
        self._closed = asyncio.Event()

    async def _connect(self, host: str, port: int, previous: dict[str, Any] | None, timeout_s: float) -> None:
        last_seq = previous["credentialSubject"]["seq"] if previous else 0
        self.last_receipt = previous
        hs = InvokeClientHandshake(claims=self.claims, buyer_key=self.key, eph=KxPrivateKey.generate(),
                                   nonce=secrets.token_bytes(32), now_ms=wall_ms(), last_seq=last_seq)
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=2**21), timeout_s)
        self.writer.write(fr.plain_frame(fr.CLIENT_HELLO, hs.hello))
        finish, conn = hs.receive_server_hello(await expect_plain(self.reader, fr.SERVER_HELLO, timeout_s), wall_ms())
        self.connection_id = b64url(conn.connection_id)
        self.sender = Sender(self.writer, conn.send_key)
        self.writer.write(fr.plain_frame(fr.CLIENT_FINISH, finish) + self.sender.start_frame())
        self.opener = fr.FrameOpener(conn.recv_key, await expect_plain(self.reader, fr.STREAM_START, timeout_s))
        record = await read_record(self.reader, self.opener, timeout_s)
        if record.type == fr.END:
            self._final(record.json())
            raise InvokeSessionClosed("the session has ended", final_receipt=self.final_receipt)
        state = orjson.loads(cm.unpack_message(record.payload, allowed=frozenset({cm.STATE})).body)
        self._state(state)
        self._reader_task = asyncio.get_running_loop().create_task(self._read())

    def _state(self, state: dict[str, Any]) -> None:
        self.metered = bool(state.get("metered"))
        self.concurrency = int(state.get("max_concurrency") or 1)
        self._slots = asyncio.Semaphore(self.concurrency)
        if not self.metered:
            return
        if state.get("receipt") is not None:  # a receipt we missed: newer than the one we hold
            previous = self.last_receipt["credentialSubject"] if self.last_receipt else None
            verify_receipt(state["receipt"], self.claims, previous=previous)
            self.last_receipt = state["receipt"]
        self.countersigned_seq = max(self.countersigned_seq, int(state["countersigned_seq"]))
        self.countersigned_minor = max(self.countersigned_minor, int(state["countersigned_amount_minor"]))

    # -- incoming ---------------------------------------------------------------------------
    async def _read(self) -> None:
        try:
            while True:
                record = await read_record(self.reader, self.opener, None)
                if record.type == fr.END:
                    self._final(record.json())
                    return
                self._message(cm.unpack_message(record.payload, allowed=cm.FROM_NODE))
        except Refused as exc:
            self._fail(refusal({"code": exc.code, "detail": exc.peer_detail}))
        except MarketError as exc:
            self._fail(exc)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            self._fail(StreamTruncated("the connection to the node was lost"))
        finally:
            self._closed.set()
            if self.failure is None and self.final_receipt is None:
                self._fail(StreamTruncated("the node ended the connection"))

    def _message(self, message: cm.Message) -> None:
        pending = self._calls.get(message.call)
        if message.kind == cm.OUTPUT and pending is not None:
            pending.output.append(message.body)
            if message.last and not self.metered:
                self._resolve(message.call, InvokeResult(orjson.loads(b"".join(pending.output)), None, 0, 0,
                                                         message.call))
        elif message.kind == cm.RECEIPT:
            self._receipt(message.call, decode(message.body))
        elif message.kind == cm.REJECTION:
            rejection = decode(message.body)
            subject = verify_rejection(rejection, self.claims)
            self._resolve(message.call, refusal({"code": subject["code"], "detail": subject["detail"]},
                                                rejection=rejection))
        elif message.kind == cm.REFUSAL:
            self._resolve(message.call, refusal(loads_strict(message.body)))

    def _receipt(self, call: int, receipt: dict[str, Any]) -> None:
        previous = self.last_receipt["credentialSubject"] if self.last_receipt else None
        subject = verify_receipt(receipt, self.claims, previous=previous, connection=self.connection_id)
        pending = self._calls.get(call)
        if pending is None or subject["call"] != call:
            raise InvokeReceiptInvalid(f"a receipt for call {call}, which is not running")
        output = b"".join(pending.output)
        if subject["input_hash"] != pending.input_hash or (
                subject["billed"] and subject["output_hash"] != sha256_sri(output)):
            raise InvokeReceiptInvalid("the receipt does not sign this call's input and output")
        self.last_receipt = receipt
        if self.countersign_policy == "every" and subject["billed"]:
            self._countersign()
        if subject["billed"]:
            self._resolve(call, InvokeResult(orjson.loads(output), receipt, subject["units"], subject["amount_minor"],
                                             call))
        else:
            self._resolve(call, refusal({"code": subject["error"], "detail": f"call {call}: {subject['outcome']}, "
                                         "not billed"}, receipt=receipt))

    def _final(self, receipt: Any) -> None:
        if isinstance(receipt, dict) and receipt.get("metered") is False:
            self.final_receipt = None
        else:
            previous = self.last_receipt["credentialSubject"] if self.last_receipt else None
            subject = verify_receipt(receipt, self.claims, previous=previous)
            if not subject["final"]:
                raise InvokeReceiptInvalid("the node's end carries no final receipt")
            self.final_receipt = self.last_receipt = receipt
        self._fail(InvokeSessionClosed("the session has ended", final_receipt=self.final_receipt))

    def _resolve(self, call: int, outcome: InvokeResult | MarketError) -> None:
        pending = self._calls.pop(call, None)
        if pending is None or pending.future.done():
            return
        if isinstance(outcome, MarketError):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)

    def _fail(self, exc: MarketError) -> None:
        if self.failure is None:
            self.failure = exc
        for call in list(self._calls):
            self._resolve(call, exc)

    # -- outgoing ---------------------------------------------------------------------------
    def _countersign(self) -> None:
        receipt = self.last_receipt
        if receipt is None or receipt["credentialSubject"]["seq"] <= self.countersigned_seq:
            return
        vc = issue_countersignature(receipt, self.key, now_ms=wall_ms(), nonce=secrets.token_urlsafe(16))
        self.sender.message(cm.COUNTERSIGN, 0, encode(vc))
        self.countersigned_seq = receipt["credentialSubject"]["seq"]
        self.countersigned_minor = receipt["credentialSubject"]["cumulative_amount_minor"]

    def _make_room(self) -> None:
        """Countersign now if the node's cap rule would otherwise refuse the next call."""
        if not self.metered or self.last_receipt is None:
            return
        c = self.claims
        billed = self.last_receipt["credentialSubject"]["cumulative_amount_minor"]
        in_flight = len(self._calls)  # this call included
        if billed - self.countersigned_minor + in_flight * c.call_max_minor > c.max_concurrency * c.call_max_minor:
            self._countersign()

    async def invoke(self, value: Any, *, handle: Any = None) -> InvokeResult:
        """Run one call; ``handle`` (anything with a ``call`` attribute) learns its call id."""
        data = orjson.dumps(value)
        async with self._slots:
            if self.failure is not None:
                raise self.failure
            if handle is not None and getattr(handle, "cancelled", False):
                raise InvokeCallCancelled("cancelled before it was sent")
            future = asyncio.get_running_loop().create_future()
            self._next_call += 1
            pending = _Call(future)
            pending.call, pending.input_hash = self._next_call, sha256_sri(data)
            self._calls[pending.call] = pending
            self._make_room()
            self.sender.chunks(cm.CALL, pending.call, data)
            if handle is not None:
                handle.call = pending.call
            await self.sender.drain(60.0)
            return await future

    async def cancel(self, call: int) -> None:
        """Ask the node to stop call ``call`` (it answers with an unbilled receipt)."""
        if call in self._calls and not self.sender.closed:
            self.sender.message(cm.CANCEL, call)

    async def close(self, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """Countersign the latest receipt, end the session, and return the node's final receipt."""
        if self.final_receipt is None and self.failure is None and not self.sender.closed:
            vc = None
            receipt = self.last_receipt
            if self.metered and receipt is not None and receipt["credentialSubject"]["seq"] > self.countersigned_seq:
                vc = issue_countersignature(receipt, self.key, now_ms=wall_ms(), nonce=secrets.token_urlsafe(16))
            self.sender.end(canonical_json({"countersignature": vc}))
            try:
                await asyncio.wait_for(self._closed.wait(), timeout_s)
            except TimeoutError:
                pass
        await self.disconnect()
        return self.final_receipt

    async def disconnect(self) -> None:
        """Drop the connection without ending the session (it can be resumed)."""
        self.writer.close()
        with contextlib.suppress(Exception):  # the reader records its own failure
            await asyncio.wait_for(self._reader_task, 5.0)


async def open_session_async(token: str, key: SigningKey, hub_keys: Mapping[str, VerifyKey], *,
                             seller: str | None = None, previous: dict[str, Any] | None = None,
                             countersign: str = "lazy", timeout_s: float = 30.0) -> AsyncInvokeSession:
    """Connect and open (or resume, with ``previous``: the last receipt held) a session."""
    claims = verify_invoke_token(token, hub_keys, audience=None, now_s=wall_ms() // 1000, require_start=False)
    session = AsyncInvokeSession(claims, key, countersign)
    host, port = _endpoint(claims, seller)
    try:
        await session._connect(host, port, previous, timeout_s)
    except Refused as exc:
        raise refusal({"code": exc.code, "detail": exc.peer_detail}) from None
    return session


class PendingCall:
    """A call started with :meth:`InvokeSession.submit`: wait with :meth:`result`, stop with :meth:`cancel`."""

    def __init__(self, session: InvokeSession) -> None:
        self._session, self.call, self.cancelled = session, 0, False
        self.future: concurrent.futures.Future[InvokeResult] | None = None

    def result(self, timeout: float | None = None) -> InvokeResult:
        assert self.future is not None
        return self.future.result(timeout)

    def cancel(self) -> None:
        self.cancelled = True
        if self.call:
            self._session._run(self._session.inner.cancel(self.call))


class InvokeSession:
    """The blocking form: an event loop on a thread of its own runs the session."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, inner: AsyncInvokeSession) -> None:
        self.loop, self.thread, self.inner = loop, thread, inner

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def invoke(self, value: Any, timeout: float | None = None) -> InvokeResult:
        return self._run(self.inner.invoke(value), timeout)

    def submit(self, value: Any) -> PendingCall:
        handle = PendingCall(self)
        handle.future = asyncio.run_coroutine_threadsafe(self.inner.invoke(value, handle=handle), self.loop)
        return handle

    def close(self, timeout: float = 30.0) -> dict[str, Any] | None:
        try:
            return self._run(self.inner.close(timeout), timeout + 10)
        finally:
            self._stop()

    def disconnect(self) -> None:
        try:
            self._run(self.inner.disconnect(), 10)
        finally:
            self._stop()

    def _stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()

    def __enter__(self) -> InvokeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.close()

    @property
    def last_receipt(self) -> dict[str, Any] | None:
        return self.inner.last_receipt

    @property
    def final_receipt(self) -> dict[str, Any] | None:
        return self.inner.final_receipt


def open_session(token: str, key: SigningKey, hub_keys: Mapping[str, VerifyKey], **options: Any) -> InvokeSession:
    """:func:`open_session_async` for blocking code (options: seller, previous, countersign, timeout_s)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="invoke-session", daemon=True)
    thread.start()
    try:
        inner = asyncio.run_coroutine_threadsafe(open_session_async(token, key, hub_keys, **options), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        raise
    return InvokeSession(loop, thread, inner)
