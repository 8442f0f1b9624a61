"""Frames over asyncio streams for compute sessions: bounded reads, ordered writes, one sealer per side."""

from __future__ import annotations

import asyncio
from typing import Any

from domain.model import compute as cm
from domain.model import frames as fr
from domain.model.errors import FrameInvalid, InvokeIdleTimeout, MarketError, StreamTruncated
from domain.model.invoke_receipts import jcs
from domain.model.jcs import canonical_json

MAX_BUFFERED_BYTES = 4 * 2**20  # a connection stops reading while this much waits to go out


class Refused(MarketError):
    """Raised when the peer refused with an ``alert`` or ``error`` frame; ``code`` is the peer's."""

    code = "invoke_refused"
    status = 400

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.peer_detail = detail


async def read_frame(reader: asyncio.StreamReader, timeout_s: float | None) -> tuple[int, bytes] | None:
    """The next ``(type, payload)``; None on a clean end of input at a frame boundary.

    Raises:
        StreamTruncated (input ended inside a frame), FrameInvalid (a bad header),
        TimeoutError (nothing for ``timeout_s``; None waits for ever).
    """
    try:
        header = await asyncio.wait_for(reader.readexactly(fr.HEADER_BYTES), timeout_s)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise StreamTruncated("input ended inside a frame header") from exc
    frame_type, length = fr.parse_header(header)
    try:
        payload = await asyncio.wait_for(reader.readexactly(length), timeout_s)
    except asyncio.IncompleteReadError as exc:
        raise StreamTruncated("input ended inside a frame") from exc
    return frame_type, payload


async def expect_plain(reader: asyncio.StreamReader, frame_type: int, timeout_s: float) -> bytes:
    """The payload of the next frame, a plaintext ``frame_type``; an alert is raised as Refused."""
    try:
        frame = await read_frame(reader, timeout_s)
    except TimeoutError as exc:
        raise InvokeIdleTimeout(f"the peer was silent for {timeout_s:g} s") from exc
    if frame is None:
        raise StreamTruncated("the peer closed the connection during the handshake")
    got, payload = frame
    if got == fr.ALERT:
        raise Refused(*fr.parse_problem(payload))
    if got != frame_type:
        raise FrameInvalid(f"expected frame type 0x{frame_type:02x}, got 0x{got:02x}")
    return payload


async def read_record(reader: asyncio.StreamReader, opener: fr.FrameOpener, timeout_s: float | None) -> fr.Record:
    """The next decrypted record (``error`` raised as Refused; end of input as StreamTruncated)."""
    frame = await read_frame(reader, timeout_s)
    if frame is None:
        opener.close()
        raise StreamTruncated("input after the end of the stream was expected to be empty")
    if frame[0] == fr.ALERT:
        raise Refused(*fr.parse_problem(frame[1]))
    record = opener.open(*frame)
    if record.type == fr.ERROR:
        raise Refused(*fr.parse_problem(record.payload))
    return record


def problem(exc: MarketError) -> bytes:
    """``{"code","detail","status","extra"}`` as JCS: a refusal an agent can act on."""
    extra = {k: v for k, v in exc.extra.items() if isinstance(v, (int, str, bool)) or v is None}
    return canonical_json({"code": exc.code, "detail": str(exc.detail)[:512], "status": exc.status, "extra": extra})


class Sender:
    """One side's sealed stream onto a writer. Writes are synchronous, so records go out in the
    order they are made; :meth:`drain` waits while too much is buffered."""

    def __init__(self, writer: asyncio.StreamWriter, key: bytes) -> None:
        self.writer = writer
        self.sealer = fr.FrameSealer(key)
        self.closed = False
        self.bytes_out = 0

    def start_frame(self) -> bytes:
        return self.sealer.start_frame()

    def message(self, kind: int, call: int, body: bytes = b"") -> None:
        self._write(fr.DATA, cm.pack_message(kind, call, body))

    def json(self, kind: int, call: int, value: Any) -> None:
        self.message(kind, call, jcs(value))

    def chunks(self, kind: int, call: int, data: bytes) -> None:
        for payload in cm.chunk_messages(kind, call, data):
            self._write(fr.DATA, payload)

    def end(self, payload: bytes) -> None:
        self._write(fr.END, payload)

    def error(self, exc: MarketError) -> None:
        self._write(fr.ERROR, fr.problem(exc.code, exc.detail))

    def _write(self, frame_type: int, payload: bytes) -> None:
        if self.closed or self.writer.is_closing():
            return
        data = self.sealer.seal(frame_type, payload)
        self.closed = frame_type in fr.FINAL_TYPES
        self.bytes_out += len(data)
        self.writer.write(data)

    async def drain(self, timeout_s: float) -> None:
        transport = self.writer.transport
        if transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            try:
                await asyncio.wait_for(self.writer.drain(), timeout_s)
            except TimeoutError as exc:
                raise InvokeIdleTimeout(f"the peer did not read for {timeout_s:g} s") from exc
