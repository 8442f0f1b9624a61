"""The buyer's side of a delivery: ``aim-node fetch`` and :func:`fetch` for other code.

The buyer connects straight to the seller's node (the token's ``endpoint`` or ``seller``),
runs the handshake with its per-purchase key, checks the block hash list against the token's
commitment, checks each block as it arrives and writes only verified blocks to
``OUT.partial`` (fsynced, then the progress file ``OUT.partial.json`` is replaced). A drop, a
refusal to retry (``delivery_session_active``, ``delivery_busy``, timeouts) or a killed
process resumes from the last verified block. At the end the whole file is checked against
``content_hash``, the buyer sends its signed confirmation, checks the node's signed receipt,
and renames ``OUT.partial`` to ``OUT``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.model import frames as fr
from domain.model.blocks import block_length, split_hashes
from domain.model.delivery import DeliveryClaims, verify_delivery_token
from domain.model.errors import (
    BlockHashMismatch,
    DeliveryBusy,
    DeliverySessionActive,
    DeliveryTimeout,
    FrameInvalid,
    InvalidInput,
    MarketError,
    StreamTruncated,
)
from domain.model.handshake import ClientHandshake, Session
from domain.model.jcs import canonical_json
from domain.model.keys import KxPrivateKey, SigningKey, VerifyKey, b64url
from domain.model.receipts import check_against_token, issue_confirmation, verify_receipt
from node.delivery.keys import load_buyer_key, save_buyer_key
from node.delivery.wire import (
    DeliveryRefused,
    expect_plain,
    parse_endpoint,
    parse_u32,
    read_record,
    send,
    u32,
)

__all__ = ["DeliveryRefused", "FetchResult", "fetch", "fetch_async", "load_buyer_key", "save_buyer_key"]
RETRYABLE = {DeliverySessionActive.code, DeliveryBusy.code, DeliveryTimeout.code, StreamTruncated.code}
Progress = Callable[[int, int], None]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class FetchResult:
    """A finished fetch: the file, the node's receipt (None if it never came) and our confirmation."""

    path: Path
    size_bytes: int
    receipt: dict[str, Any] | None
    confirmation: dict[str, Any]
    attempts: int


@dataclass
class _Block:
    """A received block: its records' payloads in order (never joined: no 8 MiB copy), their
    total length and SHA-256, hashed record by record as they arrived."""

    index: int
    parts: list[bytes]
    length: int
    digest: bytes

    def check(self, hashes: list[bytes], size_bytes: int, block_size: int) -> None:
        """``domain.model.blocks.check_block``'s checks and errors, on the digest made on arrival."""
        if self.length != block_length(self.index, size_bytes, block_size):
            raise BlockHashMismatch(f"block {self.index} has the wrong length", block=self.index)
        if not hmac.compare_digest(self.digest, hashes[self.index]):
            raise BlockHashMismatch(f"block {self.index} does not match its committed hash", block=self.index)


def _pwrite_all(fd: int, parts: list[bytes], offset: int) -> None:
    """Write ``parts`` at ``offset`` (``pwritev``; a short write continues where it stopped)."""
    while parts:
        written = os.pwritev(fd, parts, offset)
        offset += written
        while parts and written >= len(parts[0]):
            written -= len(parts[0])
            parts = parts[1:]
        if parts and written:
            parts = [parts[0][written:], *parts[1:]]


class _Partial:
    """``OUT.partial`` and its progress file: only verified blocks, durably.

    The whole object's SHA-256 is computed as verified blocks are written, in order (a resumed
    fetch first feeds it the blocks it already had, read back from ``OUT.partial`` once), so
    the final ``content_hash`` check needs no second pass over a file of gigabytes. Its methods
    run on a worker thread, one call at a time (``_Fetch._blocks`` awaits each before the next).
    """

    def __init__(self, out: Path, claims: DeliveryClaims) -> None:
        self.out, self.claims = out, claims
        self.data = out.with_name(out.name + ".partial")
        self.state = out.with_name(out.name + ".partial.json")
        self.key = {"jti": claims.jti, "content_hash": claims.content_hash, "root": claims.raw["blocks"]["root"]}
        self.verified = 0
        if self.state.exists():
            saved = json.loads(self.state.read_text())
            if {k: saved.get(k) for k in self.key} == self.key and self.data.exists():
                self.verified = int(saved["verified_blocks"])
        fd = os.open(self.data, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, min(self.verified * claims.blocks.block_size, claims.size_bytes))
        self.fd = fd
        self._whole = hashlib.sha256()
        self._hashed_bytes = 0  # the prefix of the object fed to _whole

    def _hash_until(self, end: int) -> None:
        """Feed ``_whole`` the verified bytes of ``OUT.partial`` up to ``end``."""
        while self._hashed_bytes < end:
            chunk = os.pread(self.fd, min(1 << 20, end - self._hashed_bytes), self._hashed_bytes)
            if not chunk:
                raise BlockHashMismatch("OUT.partial is shorter than its verified blocks")
            self._whole.update(chunk)
            self._hashed_bytes += len(chunk)

    def verify_and_write(self, block: _Block, hashes: list[bytes]) -> None:
        """Check a block against its committed hash, then keep it durably (BlockHashMismatch)."""
        block_size = self.claims.blocks.block_size
        block.check(hashes, self.claims.size_bytes, block_size)
        _pwrite_all(self.fd, block.parts, block.index * block_size)
        os.fsync(self.fd)
        self.verified = block.index + 1
        tmp = self.state.with_name(self.state.name + ".tmp")
        tmp.write_text(json.dumps({**self.key, "verified_blocks": self.verified}))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.state)

    def hash_whole(self, block: _Block) -> None:
        """Feed a kept block to the whole object's hash (after its ack: not on the ack's path)."""
        start = block.index * self.claims.blocks.block_size
        self._hash_until(start)
        if self._hashed_bytes == start:
            for part in block.parts:
                self._whole.update(part)
            self._hashed_bytes += block.length

    def check_whole(self) -> None:
        """Raise BlockHashMismatch unless the verified object matches the token's ``content_hash``."""
        self._hash_until(self.claims.size_bytes)
        if "sha256-" + base64.b64encode(self._whole.digest()).decode("ascii") != self.claims.content_hash:
            raise BlockHashMismatch("the assembled object does not match the token's content_hash")

    def finish(self) -> Path:
        """Rename the checked object into place (:meth:`check_whole` passed before the confirmation)."""
        os.close(self.fd)
        os.replace(self.data, self.out)
        self.state.unlink(missing_ok=True)
        return self.out

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class _Fetch:
    def __init__(self, claims: DeliveryClaims, buyer_key: SigningKey, partial: _Partial, clock_ms: Callable[[], int],
                 progress: Progress | None, idle_timeout_s: float) -> None:
        self.claims, self.key, self.partial, self.clock_ms = claims, buyer_key, partial, clock_ms
        self.progress, self.idle = progress, idle_timeout_s

    async def attempt(self, host: str, port: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=2 * fr.MAX_RECORD), self.idle)
        try:
            session, sealer, opener = await self._handshake(reader, writer)
            hashes = await self._hash_list(reader, opener)
            await self._blocks(reader, writer, sealer, opener, hashes)
            confirmation = self._confirmation(session)
            await send(writer, sealer.seal(fr.END, canonical_json(confirmation)), self.idle)
            try:
                record = await read_record(reader, opener, self.idle)
            except (MarketError, OSError):
                return None, confirmation  # every block is verified; the receipt is the node's to report
            receipt = record.json() if record.type == fr.END else None
            if receipt is not None:
                check_against_token(verify_receipt(receipt, device_key=self.claims.seller_key), self.claims)
            return receipt, confirmation
        finally:
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[
            Session, fr.FrameSealer, fr.FrameOpener]:
        hs = ClientHandshake(claims=self.claims, buyer_key=self.key, eph=KxPrivateKey.generate(),
                             nonce=secrets.token_bytes(32), now_ms=self.clock_ms(), resume_block=self.partial.verified)
        await send(writer, fr.plain_frame(fr.CLIENT_HELLO, hs.hello), self.idle)
        server_hello = await expect_plain(reader, fr.SERVER_HELLO, self.idle)
        finish, session = hs.receive_server_hello(server_hello, self.clock_ms())
        await send(writer, fr.plain_frame(fr.CLIENT_FINISH, finish), self.idle)
        sealer = fr.FrameSealer(session.send_key)
        await send(writer, sealer.start_frame(), self.idle)
        opener = fr.FrameOpener(session.recv_key, await expect_plain(reader, fr.STREAM_START, self.idle))
        self.session = session
        return session, sealer, opener

    async def _hash_list(self, reader: asyncio.StreamReader, opener: fr.FrameOpener) -> list[bytes]:
        blocks, hashes = self.claims.blocks, []
        while len(hashes) < blocks.count:
            record = await read_record(reader, opener, self.idle)
            if record.type != fr.HASHES or parse_u32(record.payload[:4], "hashes index") != len(hashes):
                raise FrameInvalid("expected the block hash list, in order")
            hashes += split_hashes(record.payload[4:])
        blocks.check_hashes(self.claims.size_bytes, hashes)
        return hashes

    async def _blocks(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sealer: fr.FrameSealer,
                      opener: fr.FrameOpener, hashes: list[bytes]) -> None:
        """Receive every block from the resume block. Each block is checked, written and acked
        by a task (the hashing and the write on a worker thread) while the next one arrives, so
        the buyer acks a block as soon as it is durable and never holds more than two blocks.
        The whole object is checked against ``content_hash`` before returning."""
        size, block_size = self.claims.size_bytes, self.claims.blocks.block_size
        pending: asyncio.Task[None] | None = None  # the previous block's check, write and ack
        try:
            for index in range(self.partial.verified, self.claims.blocks.count):
                block = await self._next_block(reader, opener, index, block_length(index, size, block_size), pending)
                if pending is not None:
                    await self._settled(pending, reader, opener)
                pending = asyncio.create_task(self._keep(block, hashes, writer, sealer))
            if pending is not None:
                await self._settled(pending, reader, opener)
            await asyncio.to_thread(self.partial.check_whole)
        except BaseException as exc:
            if pending is not None:
                # let the last block's write finish (the progress file stays right, OUT.partial
                # is not closed under the thread); a wrong block is the reason to report
                await asyncio.wait([pending])
                found = None if pending.cancelled() else pending.exception()
                if isinstance(found, BlockHashMismatch) and found is not exc:
                    raise found from exc
            raise

    async def _next_block(self, reader: asyncio.StreamReader, opener: fr.FrameOpener, index: int, want: int,
                          pending: asyncio.Task[None] | None) -> _Block:
        """The next block's records; a wrong previous block found meanwhile is raised at once
        (a node that waits for that block's ack would otherwise leave us waiting)."""
        receive = asyncio.ensure_future(self._receive_block(reader, opener, index, want))
        try:
            if pending is not None:
                await asyncio.wait([receive, pending], return_when=asyncio.FIRST_COMPLETED)
                if pending.done() and isinstance(pending.exception(), BlockHashMismatch):
                    await pending
            return await receive
        finally:
            if not receive.done():
                receive.cancel()

    async def _receive_block(self, reader: asyncio.StreamReader, opener: fr.FrameOpener, index: int,
                             want: int) -> _Block:
        """The data records that make up block ``index`` (``want`` bytes), hashed as they come
        so the check at the end is a comparison (a node that waits for the ack waits less)."""
        parts: list[bytes] = []
        got, sha = 0, hashlib.sha256()
        while got < want:
            record = await read_record(reader, opener, self.idle)
            if record.type != fr.DATA or got + len(record.payload) > want:
                raise FrameInvalid("expected object bytes within the block")
            parts.append(record.payload)
            sha.update(record.payload)
            got += len(record.payload)
        return _Block(index, parts, got, sha.digest())

    async def _keep(self, block: _Block, hashes: list[bytes], writer: asyncio.StreamWriter,
                    sealer: fr.FrameSealer) -> None:
        """Check and write a block, ack it, then add it to the whole object's hash; on a mismatch
        tell the node and raise."""
        try:
            await asyncio.to_thread(self.partial.verify_and_write, block, hashes)
        except BlockHashMismatch as exc:
            try:
                await send(writer, sealer.seal(fr.ERROR, fr.problem(exc.code, exc.detail)), self.idle)
            except OSError:
                pass
            raise
        await send(writer, sealer.seal(fr.ACK, u32(block.index + 1)), self.idle)
        if self.progress:
            self.progress(min(self.claims.size_bytes, (block.index + 1) * self.claims.blocks.block_size),
                          self.claims.size_bytes)
        await asyncio.to_thread(self.partial.hash_whole, block)

    async def _settled(self, pending: asyncio.Task[None], reader: asyncio.StreamReader,
                       opener: fr.FrameOpener) -> None:
        """Wait for a block's task; if its ack could not be written, raise the node's reason."""
        try:
            await pending
        except OSError:
            await self._refusal(reader, opener)
            raise

    async def _refusal(self, reader: asyncio.StreamReader, opener: fr.FrameOpener) -> None:
        """Our write failed: the node may have said why just before it closed; raise that if so."""
        try:
            while True:
                await read_record(reader, opener, 2.0)
        except DeliveryRefused:
            raise
        except (MarketError, OSError):
            return

    def _confirmation(self, session: Session) -> dict[str, Any]:
        c = self.claims
        subject = {"purchase_id": c.sub, "jti": c.jti, "device_id": c.aud, "content_hash": c.content_hash,
                   "size_bytes": c.size_bytes, "blocks_root": c.raw["blocks"]["root"],
                   "session": b64url(session.session_id), "blocks_verified": c.blocks.count,
                   "received_at_ms": self.clock_ms()}
        return issue_confirmation(subject, self.key, now_ms=self.clock_ms(), nonce=secrets.token_urlsafe(18))


async def fetch_async(token: str, out: str | Path, buyer_key: SigningKey, hub_keys: Mapping[str, VerifyKey], *,
                      seller: str | None = None, retries: int = 8, progress: Progress | None = None,
                      clock_ms: Callable[[], int] = wall_ms, idle_timeout_s: float = 30.0,
                      backoff_s: float = 0.25) -> FetchResult:
    """Fetch the object ``token`` names into ``out`` (see the module docstring).

    Raises:
        DeliveryRefused: the node refused (its ``code`` says why), after the retries for
            retryable codes. BlockHashMismatch: a block or the list does not match the token.
        Every token error of :func:`verify_delivery_token` (checked before connecting).
    """
    claims = verify_delivery_token(token.strip(), hub_keys, audience=None, now_s=clock_ms() // 1000,
                                   require_start=False)
    claims.check_buyer_key(buyer_key.verify_key)
    address = seller or claims.raw.get("endpoint")
    if not address:
        raise InvalidInput("the token names no endpoint: give the seller's host:port")
    host, port = parse_endpoint(address)
    out = Path(out)
    attempt = 0
    while True:
        attempt += 1
        partial = _Partial(out, claims)
        job = _Fetch(claims, buyer_key, partial, clock_ms, progress, idle_timeout_s)
        try:
            receipt, confirmation = await job.attempt(host, port)
            path = await asyncio.to_thread(partial.finish)
            return FetchResult(path, claims.size_bytes, receipt, confirmation, attempt)
        except (OSError, MarketError) as exc:
            partial.close()
            code = exc.code if isinstance(exc, MarketError) else "connection_failed"
            if attempt > retries or (isinstance(exc, MarketError) and code not in RETRYABLE):
                raise
            await asyncio.sleep(min(5.0, backoff_s * 2 ** (attempt - 1)))


def fetch(token: str, out: str | Path, buyer_key: SigningKey, hub_keys: Mapping[str, VerifyKey],
          **options: Any) -> FetchResult:
    """The blocking form of :func:`fetch_async`."""
    return asyncio.run(fetch_async(token, out, buyer_key, hub_keys, **options))
