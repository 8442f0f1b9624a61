"""``aim-node serve``: the seller node's delivery server (asyncio TCP, one object per connection).

Per connection: handshake (``domain.model.handshake``), policy (bound key, start deadline,
resume cap, one transfer per token at a time), the block hash list, then the blocks from the
buyer's resume block, each read from disk and re-hashed before it is sent (a changed file is
refused), the buyer's signed confirmation, and the node's signed receipt. Bounded: connections
in total and per client address, idle time per read and write, the whole transfer's time (and
never past the token's deadline), memory (one block per transfer, streamed from disk), optional
rate per transfer. Redemptions, receipts, confirmations and refusals go to the outbox: a refusal
when a bound token is tried by another key, past its limits, or refused in the handshake (expired,
another buyer key, a failed proof of possession), at most once a minute per token, key and code.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from domain.model import frames as fr
from domain.model.blocks import block_length, check_block
from domain.model.delivery import CLOCK_SKEW_S, DeliveryClaims, jwk_thumbprint, verify_delivery_token
from domain.model.errors import (
    DeliveryBusy,
    DeliveryNotServed,
    DeliveryObjectChanged,
    DeliveryResumeLimit,
    DeliverySessionActive,
    DeliveryTimeout,
    DeliveryTokenBound,
    FrameInvalid,
    MarketError,
    ReceiptInvalid,
)
from domain.model.handshake import NONCE_BYTES, ServerHandshake, Session, split_fields
from domain.model.jcs import canonical_json, loads_strict
from domain.model.keys import KxPrivateKey, SigningKey, VerifyKey, b64url, b64url_decode
from domain.model.receipts import (
    check_against_token,
    digest,
    issue_receipt,
    merge_intervals,
    verify_confirmation,
)
from node.delivery.store import DeliveryStore, RegisteredObject
from node.delivery.wire import DeliveryRefused, expect_plain, parse_u32, read_record, send, u32
from node.outbox import Outbox

REFUSAL_REPEAT_MS = 60_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class ServerConfig:
    """What ``aim-node serve`` runs with."""

    device_id: str
    device_keys: list[SigningKey]
    hub_keys: dict[str, VerifyKey]
    record_size: int = fr.DEFAULT_RECORD
    max_connections: int = 64
    max_per_client: int = 8
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    max_transfer_s: float = 6 * 3600.0
    max_resumes: int = 16
    max_rate_bps: int | None = None
    skew_s: int = CLOCK_SKEW_S
    max_unacked_blocks: int = 1  # a buyer killed mid-way has at most this many blocks to fetch again


@dataclass
class _Transfer:
    claims: DeliveryClaims
    session: Session
    obj: RegisteredObject
    writer: asyncio.StreamWriter
    sealer: fr.FrameSealer
    jkt: str
    session_no: int | None = None
    start: int = 0
    sent_end: int = 0
    acked: int = 0
    ack_seen: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: str = "interrupted"
    extra: dict[str, Any] = field(default_factory=dict)


def authentic_hello(hello: bytes, hub_keys: Mapping[str, VerifyKey], device_id: str) -> tuple[DeliveryClaims, str] | None:
    """The token claims and buyer key thumbprint of a ClientHello whose token is signed by a hub
    key we trust and addressed to us, whatever its times (None otherwise)."""
    try:
        fields = split_fields(hello, (2, None, 32, 32, 8, NONCE_BYTES))
        token = fields[1].decode("ascii")
        payload = loads_strict(b64url_decode(token.split(".")[1])) if token.count(".") == 2 else None
        if not isinstance(payload, dict) or type(payload.get("iat")) is not int:
            return None
        nbf = payload.get("nbf")
        at_s = max(payload["iat"], nbf if type(nbf) is int else 0)  # inside its validity: only the signature counts
        claims = verify_delivery_token(token, hub_keys, audience=device_id, now_s=at_s, require_start=False)
        return claims, jwk_thumbprint(VerifyKey.from_bytes(fields[3]))
    except (MarketError, UnicodeDecodeError):
        return None


def open_confined(obj: RegisteredObject) -> int:
    """Open the registered file read-only after re-resolving it: it must still be the same regular
    file path inside its registered folder, with the registered size. Returns the descriptor."""
    real, root = os.path.realpath(obj.path), os.path.realpath(obj.root)
    if real != obj.path or os.path.commonpath([real, root]) != root:
        raise DeliveryObjectChanged("the registered file now resolves outside its folder")
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size != obj.size_bytes:
        os.close(fd)
        raise DeliveryObjectChanged("the registered file changed size or is no longer a regular file")
    return fd


class DeliveryServer:
    """The delivery server. ``store`` and ``outbox`` are used from the event loop's thread only."""

    def __init__(self, config: ServerConfig, store: DeliveryStore, outbox: Outbox,
                 clock_ms: Callable[[], int] = wall_ms) -> None:
        self.config, self.store, self.outbox, self.clock_ms = config, store, outbox, clock_ms
        self._connections = 0
        self._per_client: Counter[str] = Counter()
        self._active: set[str] = set()
        self._refusals_noted: dict[tuple[str, str, str], int] = {}

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._on_connect, host, port)

    # -- hooks (a test server overrides them) -------------------------------------------------
    def read_block(self, fd: int, obj: RegisteredObject, index: int) -> bytes:
        """Block ``index`` from disk, re-checked against the registered hash (DeliveryObjectChanged)."""
        length = block_length(index, obj.size_bytes, obj.block_size)
        data = os.pread(fd, length, index * obj.block_size)
        try:
            check_block(index, data, obj.hashes, obj.size_bytes, obj.block_size)
        except MarketError as exc:
            raise DeliveryObjectChanged(f"block {index} changed on disk; refusing to serve it") from exc
        return data

    def outgoing_block(self, index: int, data: bytes) -> bytes:
        return data

    # -- connection ---------------------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        try:
            if self._connections >= self.config.max_connections or self._per_client[peer] >= self.config.max_per_client:
                await self._alert(writer, DeliveryBusy("too many connections; retry later"))
                return
            self._connections += 1
            self._per_client[peer] += 1
            try:
                await self._connection(reader, writer)
            finally:
                self._connections -= 1
                self._per_client[peer] -= 1
                if not self._per_client[peer]:
                    del self._per_client[peer]
        except (ConnectionError, OSError, asyncio.IncompleteReadError, MarketError):
            pass
        finally:
            await self._linger(reader, writer)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Close gracefully: FIN after our last frame, then drop what the peer still sends (for at
        most 2 s), so unread input does not turn the close into a reset that loses our error frame."""
        try:
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(2.0):
                while await reader.read(65536):
                    pass
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _alert(self, writer: asyncio.StreamWriter, exc: MarketError) -> None:
        try:
            await send(writer, fr.plain_frame(fr.ALERT, fr.problem(exc.code, exc.detail)), 5.0)
        except (ConnectionError, OSError, MarketError):
            pass

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self.config
        hs = ServerHandshake(device_keys=cfg.device_keys, device_id=cfg.device_id, hub_keys_by_kid=cfg.hub_keys,
                             eph=KxPrivateKey.generate(), nonce=secrets.token_bytes(32), skew_s=cfg.skew_s)
        hello = b""
        try:
            hello = await expect_plain(reader, fr.CLIENT_HELLO, cfg.handshake_timeout_s)
            claims = hs.receive_hello(hello, self.clock_ms())
            obj = self._object_for(claims)
            await send(writer, fr.plain_frame(fr.SERVER_HELLO, hs.server_hello(self.clock_ms())), cfg.idle_timeout_s)
            finish = await expect_plain(reader, fr.CLIENT_FINISH, cfg.handshake_timeout_s)
            session = hs.receive_finish(finish)
        except DeliveryRefused:
            return
        except MarketError as exc:
            self._refused_before_transfer(hello, exc)
            await self._alert(writer, exc)
            return
        sealer = fr.FrameSealer(session.send_key)
        await send(writer, sealer.start_frame(), cfg.idle_timeout_s)
        opener = fr.FrameOpener(session.recv_key, await expect_plain(reader, fr.STREAM_START, cfg.idle_timeout_s))
        t = _Transfer(claims, session, obj, writer, sealer, jwk_thumbprint(session.buyer_key))
        try:
            self._admit(t)
        except MarketError as exc:
            await self._seal_error(t, exc)
            return
        self._active.add(claims.jti)
        try:
            deadline_s = min(cfg.max_transfer_s, claims.exp + cfg.skew_s - self.clock_ms() / 1000)
            async with asyncio.timeout(max(deadline_s, 0.001)):
                await self._transfer(t, reader, opener)
        except TimeoutError:
            await self._seal_error(t, DeliveryTimeout("the transfer's time is up"))
        except MarketError as exc:
            if not isinstance(exc, DeliveryRefused):
                t.outcome = "failed" if isinstance(exc, DeliveryObjectChanged) else t.outcome
                await self._seal_error(t, exc)
        finally:
            self._active.discard(claims.jti)
            self._close_session(t)

    def _object_for(self, claims: DeliveryClaims) -> RegisteredObject:
        obj = self.store.lookup(claims.listing_id)
        if obj is None:
            raise DeliveryNotServed("this node serves no object for that listing")
        if (obj.content_hash, obj.size_bytes, obj.commitment.to_json()) != (
                claims.content_hash, claims.size_bytes, claims.raw["blocks"]):
            raise DeliveryObjectChanged("the registered object is not the one the token names")
        return obj

    def _admit(self, t: _Transfer) -> None:
        found = self.store.redemption(t.claims.jti)
        try:
            if found is not None and found.jkt != t.jkt:
                raise DeliveryTokenBound("this delivery token is bound to another buyer key")
            if found is None:
                t.claims.check_start(self.clock_ms() // 1000, self.config.skew_s)
            elif found.sessions > self.config.max_resumes:
                raise DeliveryResumeLimit(f"this delivery was resumed {self.config.max_resumes} times already")
            if t.claims.jti in self._active:
                raise DeliverySessionActive("a transfer for this token is running; retry when it ends")
            if t.session.resume_block > t.obj.commitment.count:
                raise FrameInvalid("resume block past the end of the object")
        except (DeliveryTokenBound, DeliveryResumeLimit) as exc:
            self._refusal(t, exc)
            raise

    def _refusal(self, t: _Transfer, exc: MarketError) -> None:
        self._refusal_entry(t.claims, t.jkt, exc.code)

    def _refusal_entry(self, claims: DeliveryClaims, jkt: str, code: str) -> None:
        now = self.clock_ms()
        last = self._refusals_noted.get((claims.jti, jkt, code))
        if last is not None and now - last < REFUSAL_REPEAT_MS:
            return  # someone hammering a bound token: one entry a minute says it
        self._refusals_noted[(claims.jti, jkt, code)] = now
        if len(self._refusals_noted) > 4096:
            self._refusals_noted.clear()
        self.outbox.append("refusal", {"jti": claims.jti, "purchase_id": claims.sub, "jkt": jkt, "code": code,
                                       "at_ms": now}, now)

    def _refused_before_transfer(self, hello: bytes, exc: MarketError) -> None:
        """A handshake refused (an expired token, another buyer key, a failed proof of possession):
        an outbox refusal when the token is the hub's, for this node, and its ``jti`` is bound here.
        Unsigned or foreign tokens write nothing (anyone could send those)."""
        found = authentic_hello(hello, self.config.hub_keys, self.config.device_id) if hello else None
        if found is not None and self.store.redemption(found[0].jti) is not None:
            self._refusal_entry(found[0], found[1], exc.code)

    async def _seal_error(self, t: _Transfer, exc: MarketError) -> None:
        try:
            await send(t.writer, t.sealer.seal(fr.ERROR, fr.problem(exc.code, exc.detail)), 5.0)
        except (ConnectionError, OSError, MarketError):
            pass

    # -- transfer -----------------------------------------------------------------------------
    async def _transfer(self, t: _Transfer, reader: asyncio.StreamReader, opener: fr.FrameOpener) -> None:
        cfg, obj = self.config, t.obj
        per_frame = fr.MAX_RECORD // 32 - 1
        for first in range(0, len(obj.hashes), per_frame):
            payload = u32(first) + b"".join(obj.hashes[first : first + per_frame])
            await send(t.writer, t.sealer.seal(fr.HASHES, payload), cfg.idle_timeout_s)
        buyer = asyncio.create_task(self._read_buyer(t, reader, opener))
        try:
            await self._send_blocks(t, buyer)
            confirmation = await buyer
        finally:
            buyer.cancel()
        self._accept_confirmation(t, confirmation)
        receipt = self._receipt(t, digest(confirmation))
        await send(t.writer, t.sealer.seal(fr.END, canonical_json(receipt)), cfg.idle_timeout_s)

    async def _send_blocks(self, t: _Transfer, buyer: asyncio.Task[Any]) -> None:
        cfg, obj = self.config, t.obj
        t.start = t.sent_end = min(t.session.resume_block * obj.block_size, obj.size_bytes)
        fd = await asyncio.to_thread(open_confined, obj)
        ahead: asyncio.Task[bytes] | None = None  # the next block, read and re-hashed while waiting or sending
        try:
            for index in range(t.session.resume_block, obj.commitment.count):
                read = ahead or asyncio.create_task(asyncio.to_thread(self.read_block, fd, obj, index))
                ahead = None
                await self._wait_for_acks(t, buyer, index)
                began = time.monotonic()
                data = self.outgoing_block(index, await read)
                if index + 1 < obj.commitment.count:
                    ahead = asyncio.create_task(asyncio.to_thread(self.read_block, fd, obj, index + 1))
                self._reserve(t, index * obj.block_size + len(data))
                record = min(cfg.record_size, obj.block_size)
                for pos in range(0, len(data), record):
                    if buyer.done():
                        await buyer  # the buyer stopped: raise its reason
                        raise FrameInvalid("the buyer confirmed before the last block")
                    chunk = data[pos : pos + record]
                    await send(t.writer, t.sealer.seal(fr.DATA, chunk), cfg.idle_timeout_s)
                    t.sent_end += len(chunk)
                if cfg.max_rate_bps:
                    await asyncio.sleep(max(0.0, len(data) / cfg.max_rate_bps - (time.monotonic() - began)))
            if t.session_no is None:
                self._reserve(t, t.start)  # nothing left to send: still one (empty) session
        finally:
            if ahead is not None:
                await asyncio.wait([ahead])  # its pread ends before the descriptor is closed
                if not ahead.cancelled():
                    ahead.exception()  # a block never sent: its error is not this transfer's
            os.close(fd)

    async def _wait_for_acks(self, t: _Transfer, buyer: asyncio.Task[Any], index: int) -> None:
        """Send block ``index`` only once the buyer has acked all but ``max_unacked_blocks - 1``
        of the blocks before it, so what a killed buyer had not verified is at most that many
        blocks (socket buffers on loopback alone hold more than one 8 MiB block)."""
        need = index + 1 - self.config.max_unacked_blocks
        while max(t.acked, t.session.resume_block) < need:
            if buyer.done():
                await buyer  # the buyer stopped: raise its reason
                raise FrameInvalid("the buyer confirmed before the last block")
            t.ack_seen.clear()
            waiter = asyncio.ensure_future(t.ack_seen.wait())
            try:
                done, _ = await asyncio.wait([waiter, buyer], timeout=self.config.idle_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if not done:
                raise DeliveryTimeout(f"no ack from the buyer for {self.config.idle_timeout_s:g} s")

    def _reserve(self, t: _Transfer, end: int) -> None:
        now = self.clock_ms()
        if t.session_no is None:
            try:
                t.session_no = self.store.begin_session(t.claims, t.jkt, start=t.start, first_end=end, now_ms=now,
                                                        max_resumes=self.config.max_resumes)
            except (DeliveryTokenBound, DeliveryResumeLimit) as exc:
                self._refusal(t, exc)
                raise
            if t.session_no == 1:
                c = t.claims
                self.outbox.append("redemption", {"jti": c.jti, "purchase_id": c.sub, "listing_id": c.listing_id,
                                                  "device_id": c.aud, "jkt": t.jkt, "bound_at_ms": now}, now)
        else:
            self.store.reserve(t.claims.jti, t.session_no, end, now)

    async def _read_buyer(self, t: _Transfer, reader: asyncio.StreamReader, opener: fr.FrameOpener) -> Any:
        """Acks until the buyer's ``end`` (its confirmation), which is returned."""
        while True:
            record = await read_record(reader, opener, self.config.idle_timeout_s)
            if record.type == fr.ACK:
                t.acked = min(parse_u32(record.payload, "ack"), t.obj.commitment.count)
                t.ack_seen.set()  # written to the store when the session closes, not per block
            elif record.type == fr.END:
                return record.json()
            else:
                raise FrameInvalid(f"unexpected {record.name} from the buyer")

    def _accept_confirmation(self, t: _Transfer, confirmation: Any) -> None:
        subject = verify_confirmation(confirmation, cnf_jkt=t.claims.cnf_jkt)
        check_against_token(subject, t.claims)
        if subject["session"] != b64url(t.session.session_id) or subject["blocks_verified"] != t.obj.commitment.count:
            raise ReceiptInvalid("the confirmation is for another session or does not cover every block")
        t.acked = t.obj.commitment.count
        self.outbox.append("confirmation", confirmation, self.clock_ms())
        t.outcome = "complete"

    def _receipt(self, t: _Transfer, confirmation_digest: str | None) -> dict[str, Any]:
        c, now = t.claims, self.clock_ms()
        seq, counters = self.store.close_session(c.jti, t.session_no, t.sent_end, now, blocks_acked=t.acked,
                                                 outcome=t.outcome)
        served = self.store.intervals(c.jti)
        subject = {"purchase_id": c.sub, "jti": c.jti, "device_id": c.aud, "listing_id": c.listing_id,
                   "listing_version": c.listing_version, "content_hash": c.content_hash, "size_bytes": c.size_bytes,
                   "blocks_root": c.raw["blocks"]["root"], "buyer_jkt": t.jkt, "seq": seq,
                   "bytes_sent": sum(e - s for s, e in served), "intervals": merge_intervals(served),
                   "session": b64url(t.session.session_id), "outcome": t.outcome, "confirmation": confirmation_digest,
                   **counters}
        signer = next(k for k in self.config.device_keys if k.verify_key == c.seller_key)
        receipt = issue_receipt(subject, signer, now_ms=now, nonce=secrets.token_urlsafe(18))
        self.outbox.append("receipt", receipt, now)
        t.session_no = None  # settled: the closing step has nothing left to do
        return receipt

    def _close_session(self, t: _Transfer) -> None:
        if t.session_no is not None:
            self._receipt(t, None)
