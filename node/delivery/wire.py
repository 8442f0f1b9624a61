"""Frames over asyncio streams: bounded reads with an idle timeout, writes with back-pressure."""

from __future__ import annotations

import asyncio
import struct

from domain.model.errors import DeliveryTimeout, FrameInvalid, MarketError, StreamTruncated
from domain.model.frames import ALERT, ERROR, HEADER_BYTES, FrameOpener, Record, parse_header, parse_problem


class DeliveryRefused(MarketError):
    """Raised when the peer refused the delivery with an alert or error frame; ``code`` is the peer's."""

    code = "delivery_refused"
    status = 400

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.peer_detail = detail


async def read_frame(reader: asyncio.StreamReader, timeout_s: float) -> tuple[int, bytes] | None:
    """The next ``(type, payload)``; None on a clean end of input at a frame boundary.

    Raises:
        StreamTruncated: input ended inside a frame. FrameInvalid: a bad header.
        DeliveryTimeout: nothing arrived for ``timeout_s``.
    """
    try:
        header = await asyncio.wait_for(reader.readexactly(HEADER_BYTES), timeout_s)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise StreamTruncated("input ended inside a frame header") from exc
    except TimeoutError as exc:
        raise DeliveryTimeout(f"peer idle for {timeout_s:g} s") from exc
    frame_type, length = parse_header(header)
    try:
        payload = await asyncio.wait_for(reader.readexactly(length), timeout_s)
    except asyncio.IncompleteReadError as exc:
        raise StreamTruncated("input ended inside a frame") from exc
    except TimeoutError as exc:
        raise DeliveryTimeout(f"peer idle for {timeout_s:g} s") from exc
    return frame_type, payload


async def expect_plain(reader: asyncio.StreamReader, frame_type: int, timeout_s: float) -> bytes:
    """The payload of the next frame, which must be a plaintext ``frame_type`` (an alert is raised)."""
    frame = await read_frame(reader, timeout_s)
    if frame is None:
        raise StreamTruncated("the peer closed the connection during the handshake")
    got, payload = frame
    if got == ALERT:
        raise DeliveryRefused(*parse_problem(payload))
    if got != frame_type:
        raise FrameInvalid(f"expected frame type 0x{frame_type:02x}, got 0x{got:02x}")
    return payload


async def read_record(reader: asyncio.StreamReader, opener: FrameOpener, timeout_s: float) -> Record:
    """The next decrypted record; an ``error`` record is raised as DeliveryRefused."""
    frame = await read_frame(reader, timeout_s)
    if frame is None:
        opener.close()  # raises StreamTruncated unless the stream was finished
        raise StreamTruncated("input after the end of the stream was expected to be empty")
    if frame[0] == ALERT:
        raise DeliveryRefused(*parse_problem(frame[1]))
    record = opener.open(*frame)
    if record.type == ERROR:
        raise DeliveryRefused(*parse_problem(record.payload))
    return record


async def send(writer: asyncio.StreamWriter, data: bytes, timeout_s: float) -> None:
    """Write and wait for the transport's buffer to drain (bounded memory)."""
    writer.write(data)
    try:
        await asyncio.wait_for(writer.drain(), timeout_s)
    except TimeoutError as exc:
        raise DeliveryTimeout(f"peer did not read for {timeout_s:g} s") from exc


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def parse_u32(data: bytes, what: str) -> int:
    if len(data) != 4:
        raise FrameInvalid(f"{what} is a u32")
    return struct.unpack(">I", data)[0]


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` from ``host:port``, ``tcp://host:port`` or ``http://host:port[/…]``."""
    rest = text.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"not a host:port endpoint: {text!r}")
    return host.strip("[]"), int(port)
