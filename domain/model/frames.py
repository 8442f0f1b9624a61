"""Delivery frames: a 5-byte header, then the payload; after the handshake, every payload is a
libsodium secretstream (XChaCha20-Poly1305) record with the header as associated data.

Header: ``type`` (u8) || ``length`` (u32be, the payload's length in bytes). Types:

=====  ================  ==========  =========================================================
type   name              encrypted   payload
=====  ================  ==========  =========================================================
0x01   client_hello      no          handshake (``domain.model.handshake``), ≤ 16 KiB
0x02   server_hello      no          handshake
0x03   client_finish     no          handshake
0x04   stream_start      no          the 24-byte secretstream header of the sender's direction
0x05   alert             no          JCS ``{"code","detail"}``: a refusal before any stream
0x10   data              yes         object bytes, in order from the resume block (≤ 1 MiB)
0x11   end               yes, FINAL  JCS JSON: the node's signed receipt / the buyer's confirmation
0x12   error             yes, FINAL  JCS ``{"code","detail"}``
0x13   ack               yes         u32be: the number of blocks the buyer has verified
0x14   hashes            yes         u32be first block index || 32-byte block digests
=====  ================  ==========  =========================================================

Each direction has its own key (from the handshake) and its own secretstream, started by
that direction's ``stream_start``. ``end`` and ``error`` records carry ``TAG_FINAL`` and
nothing may follow them; every other record carries ``TAG_MESSAGE``. A record that fails
authentication (a flipped bit, a changed header, a reordered, replayed or dropped record:
the stream's nonce is an internal counter) raises :class:`FrameInvalid`; a stream that ends
without its final record raises :class:`StreamTruncated` when :meth:`FrameOpener.close` is called.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import nacl.bindings as sodium
import nacl.exceptions

from domain.model.errors import FrameInvalid, InvalidInput, StreamTruncated
from domain.model.jcs import canonical_json, loads_strict

CLIENT_HELLO, SERVER_HELLO, CLIENT_FINISH, STREAM_START, ALERT = 0x01, 0x02, 0x03, 0x04, 0x05
DATA, END, ERROR, ACK, HASHES = 0x10, 0x11, 0x12, 0x13, 0x14
PLAIN_TYPES = frozenset({CLIENT_HELLO, SERVER_HELLO, CLIENT_FINISH, STREAM_START, ALERT})
SEALED_TYPES = frozenset({DATA, END, ERROR, ACK, HASHES})
FINAL_TYPES = frozenset({END, ERROR})
NAMES = {CLIENT_HELLO: "client_hello", SERVER_HELLO: "server_hello", CLIENT_FINISH: "client_finish",
         STREAM_START: "stream_start", ALERT: "alert", DATA: "data", END: "end", ERROR: "error", ACK: "ack",
         HASHES: "hashes"}

HEADER = struct.Struct(">BI")
HEADER_BYTES = HEADER.size
ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
STREAM_HEADER_BYTES = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
KEY_BYTES = sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
MIN_RECORD = 64 * 1024
MAX_RECORD = 1024 * 1024
DEFAULT_RECORD = MAX_RECORD
MAX_HANDSHAKE = 16 * 1024
MAX_CONTROL = 64 * 1024  # end, error, alert, ack payloads


def max_payload(frame_type: int) -> int:
    """The largest payload a frame of ``frame_type`` may announce (ciphertext for sealed types)."""
    if frame_type in (CLIENT_HELLO, SERVER_HELLO, CLIENT_FINISH):
        return MAX_HANDSHAKE
    if frame_type == STREAM_START:
        return STREAM_HEADER_BYTES
    if frame_type in (DATA, HASHES):
        return MAX_RECORD + ABYTES
    if frame_type in (ALERT, END, ERROR, ACK):
        return MAX_CONTROL + ABYTES
    raise FrameInvalid(f"unknown frame type 0x{frame_type:02x}")


def parse_header(header: bytes) -> tuple[int, int]:
    """``(type, length)`` of a 5-byte header; unknown types and oversized lengths are FrameInvalid."""
    if len(header) != HEADER_BYTES:
        raise FrameInvalid("a frame header is 5 bytes")
    frame_type, length = HEADER.unpack(header)
    if length > max_payload(frame_type):
        raise FrameInvalid(f"{NAMES[frame_type]} frame of {length} bytes is too large")
    if frame_type == STREAM_START and length != STREAM_HEADER_BYTES:
        raise FrameInvalid("stream_start carries exactly the 24-byte stream header")
    return frame_type, length


def plain_frame(frame_type: int, payload: bytes) -> bytes:
    """A plaintext frame (handshake, stream_start, alert)."""
    if frame_type not in PLAIN_TYPES:
        raise InvalidInput("only handshake, stream_start and alert frames are sent in clear")
    if len(payload) > max_payload(frame_type):
        raise InvalidInput("frame payload too large")
    return HEADER.pack(frame_type, len(payload)) + payload


def problem(code: str, detail: str) -> bytes:
    """The JCS ``{"code","detail"}`` payload of an alert or error frame."""
    return canonical_json({"code": str(code)[:64], "detail": str(detail)[:512]})


def parse_problem(payload: bytes) -> tuple[str, str]:
    """``(code, detail)`` from an alert or error payload (malformed ones become ``frame_invalid``)."""
    try:
        obj = loads_strict(payload)
    except InvalidInput:
        return FrameInvalid.code, "malformed error payload"
    if not isinstance(obj, dict) or not isinstance(obj.get("code"), str):
        return FrameInvalid.code, "malformed error payload"
    return obj["code"][:64], str(obj.get("detail", ""))[:512]


class FrameSealer:
    """One direction's sending side: :attr:`header` goes out in ``stream_start``, then :meth:`seal`."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise InvalidInput("a secretstream key is 32 bytes")
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        self.header = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        self._closed = False

    def start_frame(self) -> bytes:
        """The ``stream_start`` frame that carries :attr:`header`."""
        return plain_frame(STREAM_START, self.header)

    def seal(self, frame_type: int, plaintext: bytes) -> bytes:
        """The encrypted frame (header || ciphertext); ``end``/``error`` close the stream."""
        if self._closed:
            raise InvalidInput("the stream is closed")
        if frame_type not in SEALED_TYPES:
            raise InvalidInput("not an encrypted frame type")
        if len(plaintext) + ABYTES > max_payload(frame_type):
            raise InvalidInput("frame payload too large")
        header = HEADER.pack(frame_type, len(plaintext) + ABYTES)
        tag = TAG_FINAL if frame_type in FINAL_TYPES else TAG_MESSAGE
        self._closed = frame_type in FINAL_TYPES
        return header + sodium.crypto_secretstream_xchacha20poly1305_push(self._state, plaintext, header, tag)


@dataclass(frozen=True, slots=True)
class Record:
    """A decrypted record."""

    type: int
    payload: bytes

    @property
    def name(self) -> str:
        return NAMES[self.type]

    def json(self) -> Any:
        """The payload parsed as strict JSON (``end``, ``error``)."""
        try:
            return loads_strict(self.payload)
        except InvalidInput as exc:
            raise FrameInvalid(f"{self.name} payload is not JSON") from exc


class FrameOpener:
    """One direction's receiving side, started from the peer's ``stream_start`` header."""

    def __init__(self, key: bytes, header: bytes) -> None:
        if len(key) != KEY_BYTES or len(header) != STREAM_HEADER_BYTES:
            raise InvalidInput("a secretstream key is 32 bytes and its header 24")
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        try:
            sodium.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key)
        except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError) as exc:
            raise FrameInvalid("bad stream header") from exc
        self.finished = False

    def open(self, frame_type: int, ciphertext: bytes) -> Record:
        """Decrypt one record whose header announced ``frame_type`` and ``len(ciphertext)``.

        Raises:
            FrameInvalid: not a sealed type, after the final record, authentication failed
                (tampered, reordered, replayed), or a tag that does not fit the type.
        """
        if self.finished:
            raise FrameInvalid("a record after the end of the stream")
        if frame_type not in SEALED_TYPES:
            raise FrameInvalid(f"{NAMES.get(frame_type, hex(frame_type))} frame inside the encrypted stream")
        if len(ciphertext) > max_payload(frame_type) or len(ciphertext) < ABYTES:
            raise FrameInvalid("record length out of range")
        header = HEADER.pack(frame_type, len(ciphertext))
        try:
            plaintext, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(self._state, ciphertext, header)
        except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError, ValueError) as exc:
            raise FrameInvalid("record authentication failed: tampered, reordered, replayed or dropped") from exc
        final = tag == TAG_FINAL
        if final != (frame_type in FINAL_TYPES) or tag not in (TAG_MESSAGE, TAG_FINAL):
            raise FrameInvalid("record tag does not match its frame type")
        self.finished = final
        return Record(frame_type, plaintext)

    def close(self) -> None:
        """Call at end of input: raises StreamTruncated unless the final record arrived."""
        if not self.finished:
            raise StreamTruncated("the stream ended before its final record")
