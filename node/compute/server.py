"""``aim-node compute serve``: the seller node's compute server (asyncio TCP, ``aimarket-invoke/1``).

Per connection: the handshake (``domain.model.invoke_handshake``: the hub-signed invoke token,
the buyer's proof of its ``cnf`` key, the node's proof of its device key), the session (bound
durably to the buyer key at the first connection, before anything is served; one connection at
a time; a reconnection gets the counters and the latest receipt), then calls
(``node.compute.connection``). A session ends, with a final receipt committed and put in the
compute outbox, when the buyer closes it, at its deadline (the token's ``exp``, or
``--max-session`` after it was bound), when its budget cannot pay for one more call (after the
last receipt is countersigned, or ``final_grace_s``), or when a byte limit is reached. At start,
sessions left open by a crash are loaded back; those past their deadline end at once.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domain.model import frames as fr
from domain.model.delivery import CLOCK_SKEW_S, jwk_thumbprint
from domain.model.errors import (
    ComputeBusy,
    InvokeNotServed,
    InvokeSessionActive,
    InvokeSessionClosed,
    InvokeTokenBound,
    InvokeUnitMismatch,
    MarketError,
)
from domain.model.invoke import InvokeClaims, stored_claims
from domain.model.invoke_handshake import InvokeConnection, InvokeServerHandshake
from domain.model.jcs import canonical_json
from domain.model.keys import KxPrivateKey, SigningKey, VerifyKey
from node.compute.connection import REJECTION_REPEAT_MS, Connection, wall_ms
from node.compute.registry import ComputeAsset
from node.compute.safety import SafetyCheck
from node.compute.session import Session
from node.compute.store import SessionRow, SessionStore, op_bind, op_outbox
from node.compute.wire import Refused, Sender, expect_plain
from node.compute.workers import WorkerPool

NO_CONNECTION = "A" * 43  # base64url of 32 zero bytes: a final receipt made with no buyer connected


@dataclass
class ComputeConfig:
    """What ``aim-node compute serve`` runs with (see its ``--help``)."""

    device_id: str
    device_keys: list[SigningKey]
    hub_keys: dict[str, VerifyKey]
    max_connections: int = 64
    max_per_client: int = 8
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    max_session_s: float = 3600.0
    max_concurrency: int = 16
    max_bytes_in: int = 2**30
    max_bytes_out: int = 2**30
    max_call_s: float = 600.0
    final_grace_s: float = 5.0
    skew_s: int = CLOCK_SKEW_S
    bare_listings: frozenset[str] = field(default_factory=frozenset)


class ComputeServer:
    """The compute server; everything runs on the event loop's thread but the store's writer."""

    def __init__(self, config: ComputeConfig, assets: dict[str, ComputeAsset], store: SessionStore, pool: WorkerPool,
                 safety: SafetyCheck, clock_ms: Callable[[], int] = wall_ms) -> None:
        self.config, self.assets, self.store, self.pool, self.safety = config, assets, store, pool, safety
        self.clock_ms = clock_ms
        self.sessions: dict[str, Session] = {}
        self._connections = 0
        self._per_client: Counter[str] = Counter()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rejections: dict[tuple[str, str], int] = {}
        self._binding: set[str] = set()

    async def start(self, host: str, port: int) -> asyncio.Server:
        await self.recover()
        return await asyncio.start_server(self._on_connect, host, port, limit=2**20)

    # -- sessions -------------------------------------------------------------------------------
    def signer_for(self, claims: InvokeClaims) -> SigningKey:
        return next(k for k in self.config.device_keys if k.verify_key == claims.seller_key)

    def _session(self, row: SessionRow, claims: InvokeClaims) -> Session:
        cfg = self.config
        session = Session(row, claims, self.assets[row.listing_id], self.signer_for(claims),
                          node_concurrency=cfg.max_concurrency, max_bytes_in=cfg.max_bytes_in,
                          max_bytes_out=cfg.max_bytes_out)
        self.sessions[row.jti] = session
        loop = asyncio.get_running_loop()
        delay_s = max(0.0, (row.deadline_ms - self.clock_ms()) / 1000)
        self._timers[row.jti] = loop.call_later(delay_s, self.schedule_finalize, session, "deadline")
        return session

    async def recover(self) -> None:
        """Load the sessions a previous run left open; end those past their deadline."""
        self.store.recover()
        self.store.start()
        for row in self.store.open_sessions():
            if row.listing_id not in self.assets:
                continue  # no longer registered: it ends when the asset is back or never
            self._session(row, stored_claims(row.token))

    def schedule_finalize(self, session: Session, reason: str, delay_s: float = 0.0) -> None:
        loop = asyncio.get_running_loop()

        def go() -> None:
            task = loop.create_task(self.finalize(session, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if delay_s > 0:
            loop.call_later(delay_s, go)
        else:
            go()

    def after_call(self, session: Session) -> None:
        """A receipt or a countersignature went by: end the session when its budget is spent."""
        if not session.open or session.in_flight or not session.exhausted():
            return
        countersigned = session.row.countersigned_seq == session.row.seq
        self.schedule_finalize(session, "budget", 0.0 if countersigned else self.config.final_grace_s)

    async def finalize(self, session: Session, reason: str) -> None:
        """End the session: stop its calls, commit the final receipt and its outbox entry, and
        send it to the buyer if one is connected."""
        if not session.open or session.broken:
            return
        session.finalizing = reason
        timer = self._timers.pop(session.claims.jti, None)
        if timer is not None:
            timer.cancel()
        connection: Connection | None = session.connection
        if connection is not None:
            await connection.stop_calls()
        last = session.row.last_receipt
        conn_id = connection.connection_id if connection is not None else (
            last["credentialSubject"]["connection"] if last else NO_CONNECTION)
        now = self.clock_ms()
        receipt, op = session.final_receipt(connection=conn_id, reason=reason, now_ms=now)
        row = session.row
        body = {"jti": row.jti, "invocation_id": row.invocation_id, "receipt": receipt,
                "countersignature": row.countersignature}
        try:
            await self.store.commit(op, op_outbox("invoke_final", body, now))
        except Exception:
            session.broken = True
            raise
        if connection is not None:
            connection.sender.end(canonical_json(receipt))
            connection.finished.set()  # the read loop stops at the buyer's next record or close
            if connection.sender.writer.can_write_eof():
                connection.sender.writer.write_eof()

    def note_rejection(self, jti: str, rule: str, now_ms: int) -> bool:
        """Whether a rejection goes to the outbox: at most one a minute per session and rule."""
        last = self._rejections.get((jti, rule))
        if last is not None and now_ms - last < REJECTION_REPEAT_MS:
            return False
        if len(self._rejections) > 4096:
            self._rejections.clear()
        self._rejections[(jti, rule)] = now_ms
        return True

    # -- connections ----------------------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        cfg = self.config
        try:
            if self._connections >= cfg.max_connections or self._per_client[peer] >= cfg.max_per_client:
                await self._alert(writer, ComputeBusy("too many connections; retry later"))
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
        except (ConnectionError, OSError, asyncio.IncompleteReadError, MarketError, TimeoutError):
            pass
        finally:
            await self._linger(reader, writer)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """FIN after our last frame, then drop what the peer still sends (at most 2 s), so unread
        input does not turn the close into a reset that loses our last frame."""
        try:
            await asyncio.wait_for(writer.drain(), 5.0)
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(2.0):
                while await reader.read(65536):
                    pass
        except (TimeoutError, ConnectionError, OSError, AssertionError):
            pass
        finally:
            writer.close()

    async def _alert(self, writer: asyncio.StreamWriter, exc: MarketError) -> None:
        try:
            writer.write(fr.plain_frame(fr.ALERT, fr.problem(exc.code, exc.detail)))
            await asyncio.wait_for(writer.drain(), 5.0)
        except (ConnectionError, OSError, TimeoutError):
            pass

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> InvokeConnection:
        cfg = self.config
        hs = InvokeServerHandshake(device_keys=cfg.device_keys, device_id=cfg.device_id, hub_keys_by_kid=cfg.hub_keys,
                                   eph=KxPrivateKey.generate(), nonce=secrets.token_bytes(32), skew_s=cfg.skew_s)
        claims = hs.receive_hello(await expect_plain(reader, fr.CLIENT_HELLO, cfg.handshake_timeout_s),
                                  self.clock_ms())
        asset = self.assets.get(claims.listing_id)
        if asset is None:
            raise InvokeNotServed("this node serves no compute asset for that listing")
        if asset.manifest.metering.unit != claims.unit:
            raise InvokeUnitMismatch(f"the asset meters {asset.manifest.metering.unit}, the token {claims.unit}")
        if claims.max_call_units < asset.manifest.metering.max_units_per_call:
            # A lower cap would bill a call for fewer units than it counts: the seller loses.
            raise InvokeUnitMismatch(f"the token caps a call at {claims.max_call_units} units, the asset counts up "
                                     f"to {asset.manifest.metering.max_units_per_call}")
        writer.write(fr.plain_frame(fr.SERVER_HELLO, hs.server_hello(self.clock_ms())))
        return hs.receive_finish(await expect_plain(reader, fr.CLIENT_FINISH, cfg.handshake_timeout_s))

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self.config
        try:
            conn = await self._handshake(reader, writer)
        except Refused:
            return
        except MarketError as exc:
            await self._alert(writer, exc)
            return
        sender = Sender(writer, conn.send_key)
        writer.write(sender.start_frame())
        opener = fr.FrameOpener(conn.recv_key, await expect_plain(reader, fr.STREAM_START, cfg.idle_timeout_s))
        listing = conn.claims.listing_id
        session = None
        if listing not in cfg.bare_listings:
            try:
                session = await self._attach(conn, sender)
            except MarketError as exc:
                sender.error(exc)
                return
            if session is None:
                return  # ended before: its final receipt went out
        connection = Connection(self, session, conn, reader, sender, opener, listing)
        if session is not None:
            session.connection = connection
        try:
            await connection.run()
        except MarketError as exc:
            sender.error(exc)
        finally:
            if session is not None and session.connection is connection:
                session.connection = None

    async def _attach(self, conn: InvokeConnection, sender: Sender) -> Session | None:
        """The session of this connection: bound now (durably, before anything is served) or
        found again; None when it has ended (its final receipt is sent)."""
        claims, jkt = conn.claims, jwk_thumbprint(conn.buyer_key)
        session = self.sessions.get(claims.jti)
        if session is not None and session.broken:
            del self.sessions[claims.jti]
            session = None
        if session is None:
            if claims.jti in self._binding:
                raise InvokeSessionActive("this session is being opened by another connection; retry")
            row = self.store.load(claims.jti)
            if row is None:
                row = await self._bind(claims, jkt)
            elif row.jkt != jkt:
                raise InvokeTokenBound("this invoke token is bound to another buyer key")
            if row.state != "open":
                sender.end(canonical_json(row.final_receipt))
                return None
            session = self._session(row, claims)
        if session.row.jkt != jkt:
            raise InvokeTokenBound("this invoke token is bound to another buyer key")
        if session.row.state != "open":
            sender.end(canonical_json(session.row.final_receipt))
            return None
        if not session.open:
            raise InvokeSessionClosed("the session is ending")
        if session.connection is not None:
            raise InvokeSessionActive("a connection for this session is open; retry when it ends")
        return session

    async def _bind(self, claims: InvokeClaims, jkt: str) -> SessionRow:
        """Bind the token to the buyer key, durably, before anything is served."""
        claims.check_start(self.clock_ms() // 1000, self.config.skew_s)
        now = self.clock_ms()
        deadline = min((claims.exp + self.config.skew_s) * 1000, now + int(self.config.max_session_s * 1000))
        row = SessionRow(claims.jti, claims.sub, claims.listing_id, jkt, claims.token, now, deadline)
        self._binding.add(claims.jti)
        try:
            await self.store.commit(op_bind(row), op_outbox("invoke_bound", {
                "jti": claims.jti, "invocation_id": claims.sub, "listing_id": claims.listing_id,
                "device_id": claims.aud, "jkt": jkt, "bound_at_ms": now}, now))
        finally:
            self._binding.discard(claims.jti)
        return row

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.pool.close()
        self.store.close()

