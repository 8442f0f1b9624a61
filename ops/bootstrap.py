"""The composition root: settings in, a wired runtime out. Nothing here runs at import.

The only module that knows every adapter: it builds the event store, the read-model
database, the nonce store, the chain, the card gateway, debit routing and the settlement
queue, and hands them to the application's constructor. Only entry points import it
(``ops/cli.py``, ``ops/serve.py``'s worker hook, benches); gunicorn builds the runtime in
each worker *after* fork, so every process opens its own connection pools.
"""

from __future__ import annotations

import fcntl
import os
import secrets as pysecrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from domain.app.debit_batcher import DebitBatcher
from domain.app.invocations import InvocationConfig
from domain.app.marketplace import Marketplace, utcnow
from domain.app.money import MoneyConfig
from domain.app.purchases import PurchaseConfig
from domain.model.ports import SettleChain, SettlementLease, SettlementQueue
from domain.model.secrets import PlatformSecrets
from ops.adapters.evm.lazy import LazyChain
from ops.adapters.locks import FileRunnerLock, PgRunnerLock
from ops.adapters.nonces import DbNonceStore
from ops.adapters.sql import PostgresViewDB, SQLiteViewDB, ViewDB
from ops.settings import Settings, SettingsError
from projections.registry import all_projections
from projections.runner import ProjectionRunner, RunnerGroup


@dataclass
class Runtime:
    """Everything a process of the hub needs, built from settings."""

    settings: Settings
    market: Marketplace
    views: ViewDB
    nonces: DbNonceStore
    chain: LazyChain
    debit_batcher: DebitBatcher | None = None  # always set by build_runtime
    enqueue_settlement: SettlementQueue | None = None  # with Redis: the API's close queues settlement
    runner_group: RunnerGroup | None = field(default=None)

    def settle_chain(self) -> SettleChain:
        """The operator's settle client on this hub's chain (built on first use)."""
        from ops.adapters.evm.settle_txs import SettleClient

        return SettleClient(self.chain())

    def settlement_lease(self) -> SettlementLease:
        """One settlement worker per channel at a time: advisory locks on PostgreSQL, file
        locks embedded (``ops.adapters.settle_lease``)."""
        from ops.adapters.settle_lease import FileLease, PgLease

        if self.settings.embedded:
            return FileLease(Path(self.settings.data_dir) / "locks" / "settlements")
        return PgLease(self.settings.pg_conninfo())

    def runners(self) -> list[ProjectionRunner]:
        return [make_runner(self, p) for p in all_projections()]

    def start_projections(self) -> RunnerGroup:
        self.runner_group = RunnerGroup(self.runners()).start()
        return self.runner_group

    def close(self) -> None:
        if self.runner_group is not None:
            self.runner_group.stop()
        if self.debit_batcher is not None:
            self.debit_batcher.close()
        self.market.close()
        self.views.close()


def platform_secret(settings: Settings) -> bytes:
    """The platform secret: from AIMARKET_SECRET, or made once in the data dir (mode 0600)."""
    if settings.secret_hex:
        try:
            secret = bytes.fromhex(settings.secret_hex)
        except ValueError:
            raise SettingsError("AIMARKET_SECRET must be hex (64+ characters)") from None
        if len(secret) < 32:
            raise SettingsError("AIMARKET_SECRET must hold at least 32 bytes (64 hex characters)")
        return secret
    if not settings.embedded:
        raise SettingsError("AIMARKET_SECRET is required with PostgreSQL: every host must share it")
    path = settings.data_dir / "platform.secret"
    if not path.exists():
        # Every web worker gets here at once on a new data dir: write a private temp file
        # and link it into place (atomic, refuses to replace), so all of them read the one
        # that won, never a half-written file.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".platform.secret.{os.getpid()}.{pysecrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(pysecrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won
        finally:
            os.unlink(tmp)
    return bytes.fromhex(path.read_text().strip())


def event_store_env(settings: Settings) -> dict[str, str]:
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(settings.data_dir / "events.sqlite"), "SQLITE_LOCK_TIMEOUT": "30"}
    p = settings.pg_parts()
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres", "APPLICATION_RECORDER_TOPIC": "domain.app.eventsourcing_ext:ArrayInsertRecorder",
        "POSTGRES_DBNAME": p["dbname"],
        "POSTGRES_HOST": p["host"], "POSTGRES_PORT": p["port"], "POSTGRES_USER": p["user"],
        "POSTGRES_PASSWORD": p["password"], "POSTGRES_SCHEMA": settings.db_schema,
        "POSTGRES_POOL_SIZE": "4", "POSTGRES_MAX_OVERFLOW": "4", "POSTGRES_LOCK_TIMEOUT": "5",
    }


SCHEMA_LOCK_KEY = 7_346_112_000
BATCH_MAX = 512  # debits per group commit at most


@contextmanager
def schema_lock(settings: Settings) -> Iterator[None]:
    """Let one process at a time create the stores: processes and hosts that start at the
    same moment would otherwise race. PostgreSQL: an advisory lock (``CREATE TABLE IF NOT
    EXISTS`` can fail on the catalogue's unique index). Embedded: a file lock, because two
    first connections to a new SQLite file both switch it to WAL, and the loser gets
    "database is locked" at once (SQLite does not wait there), failing a worker's boot."""
    if settings.embedded:
        path = settings.data_dir / "locks" / "boot.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
            yield
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            if settings.db_schema != "public":
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(settings.db_schema)))
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))


def build_views(settings: Settings) -> ViewDB:
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return SQLiteViewDB(settings.data_dir / "views.sqlite")
    return PostgresViewDB(settings.pg_conninfo(), schema=settings.db_schema)


def build_runtime(settings: Settings, *, clock: Callable[[], datetime] = utcnow) -> Runtime:
    """Every adapter built from settings and handed to the application's constructor."""
    with schema_lock(settings):
        views = build_views(settings)
        nonces = DbNonceStore(views, clock_s=lambda: int(clock().timestamp()))
        chain = LazyChain(settings)
        market = Marketplace(
            event_store_env(settings), secrets=PlatformSecrets(platform_secret(settings)), hub_url=settings.hub_url,
            nonces=nonces, clock=clock, bcrypt_rounds=settings.bcrypt_rounds, session_ttl_s=settings.session_ttl_s,
            money_config=money_config(settings), chain=chain, cards=card_gateway(settings),
            purchase_config=PurchaseConfig(start_window_s=settings.delivery_start_s,
                                           transfer_window_s=settings.delivery_transfer_s),
            invocation_config=InvocationConfig(start_window_s=min(settings.invoke_start_s, settings.invoke_session_s),
                                               session_s=settings.invoke_session_s,
                                               report_grace_s=settings.invoke_report_grace_s),
        )
        runtime = Runtime(settings=settings, market=market, views=views, nonces=nonces, chain=chain,
                          debit_batcher=build_debit_batcher(settings, market),
                          enqueue_settlement=settlement_queue(settings))
        for runner in runtime.runners():
            runner.setup()  # read models exist (empty) before the first request reads them
    return runtime


def money_config(settings: Settings) -> MoneyConfig:
    s = settings
    return MoneyConfig(fee_bps=s.fee_bps, unsigned_allowance_minor=s.unsigned_allowance_minor,
                       card_channel_ttl_s=s.card_channel_ttl_s, settle_margin_s=s.settle_margin_s,
                       token_currency=s.token_currency)


def card_gateway(settings: Settings) -> Any:
    """Stripe when a key is configured; otherwise the card rail is off (payouts stay pending)."""
    if not settings.stripe_api_key:
        return None
    from ops.adapters.stripe.stripe_gateway import StripeGateway

    return StripeGateway(settings.stripe_api_key, settings.stripe_webhook_secret,
                         api_base=settings.stripe_api_base or None)


def build_debit_batcher(settings: Settings, market: Marketplace) -> DebitBatcher:
    """Every debit goes through the batcher: on PostgreSQL saved through an asyncio
    connection and, with Redis, each channel routed to one owning process. The window
    (``AIMARKET_DEBIT_BATCH_MS``) is the one setting between group commit and one commit per
    debit: 0 commits each debit alone, on the same path (the benchmark's baseline)."""
    s = settings
    router = None
    if s.redis_url and not s.embedded:
        from ops.adapters.redis_routing import RedisDebitRouter

        # Joins the members on the first debit this process takes (see DebitBatcher).
        router = RedisDebitRouter(s.redis_url, namespace=f"aimarket:{s.pg_parts()['dbname']}:{s.db_schema}")
    saver = None
    if not s.embedded:
        from ops.adapters.postgres_async import AsyncPgSaver

        saver = AsyncPgSaver(market, s.pg_conninfo())  # connects on the first batch
    window_s = max(s.debit_batch_ms, 0) / 1000
    return DebitBatcher(market, window_s=window_s, batch_max=BATCH_MAX if window_s > 0 else 1, router=router,
                        saver=saver)


def settlement_queue(settings: Settings) -> SettlementQueue | None:
    """With Redis, the API's close queues ``settle_channel`` at once (the sweep is the net)."""
    if not (settings.redis_url and not settings.embedded):
        return None
    from ops.adapters.broker import settlement_sender

    return settlement_sender(settings.redis_url)


def make_runner(runtime: Runtime, projection: object) -> ProjectionRunner:
    settings = runtime.settings
    name = projection.name  # type: ignore[attr-defined]
    if settings.embedded:
        lock: FileRunnerLock | PgRunnerLock = FileRunnerLock(Path(settings.data_dir) / "locks" / f"{name}.lock")
    else:
        lock = PgRunnerLock(f"{settings.pg_conninfo()} options='-c search_path={settings.db_schema}'", name,
                            channel=runtime.market.recorder.channel_name)  # type: ignore[attr-defined]
    return ProjectionRunner(projection, recorder=runtime.market.recorder, mapper=runtime.market.mapper,  # type: ignore[arg-type]
                            views=runtime.views, lock=lock)
