"""The composition root: settings in, a wired runtime out. Nothing here runs at import.

Gunicorn calls ``api.app.create_app`` in each worker *after* fork, which calls
``build_runtime``, so every process opens its own connection pools.
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

from domain.application import Marketplace, utcnow
from domain.secrets import PlatformSecrets
from ops.nonces import DbNonceStore
from ops.settings import Settings, SettingsError
from projections.db import PostgresViewDB, SQLiteViewDB, ViewDB
from projections.registry import all_projections
from projections.runner import FileRunnerLock, PgRunnerLock, ProjectionRunner, RunnerGroup


@dataclass
class Runtime:
    """Everything a process of the hub needs, built from settings."""

    settings: Settings
    market: Marketplace
    views: ViewDB
    nonces: DbNonceStore
    runner_group: RunnerGroup | None = field(default=None)
    debit_batcher: Any = field(default=None)  # set by workers.money_adapters.wire_money
    enqueue_settlement: Callable[[str], None] | None = field(default=None)  # with Redis: the API's close

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
        "PERSISTENCE_MODULE": "eventsourcing.postgres", "APPLICATION_RECORDER_TOPIC": "ops.pg_recorder:ArrayInsertRecorder",
        "POSTGRES_DBNAME": p["dbname"],
        "POSTGRES_HOST": p["host"], "POSTGRES_PORT": p["port"], "POSTGRES_USER": p["user"],
        "POSTGRES_PASSWORD": p["password"], "POSTGRES_SCHEMA": settings.db_schema,
        "POSTGRES_POOL_SIZE": "4", "POSTGRES_MAX_OVERFLOW": "4", "POSTGRES_LOCK_TIMEOUT": "5",
    }


SCHEMA_LOCK_KEY = 7_346_112_000


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
    with schema_lock(settings):
        views = build_views(settings)
        nonces = DbNonceStore(views, clock_s=lambda: int(clock().timestamp()))
        market = Marketplace(
            event_store_env(settings), secrets=PlatformSecrets(platform_secret(settings)), hub_url=settings.hub_url,
            nonces=nonces, clock=clock, bcrypt_rounds=settings.bcrypt_rounds, session_ttl_s=settings.session_ttl_s,
        )
        runtime = Runtime(settings=settings, market=market, views=views, nonces=nonces)
        from workers.money_adapters import wire_money  # money adapters: lazy, nothing connects here

        wire_money(runtime)
        for runner in runtime.runners():
            runner.setup()  # read models exist (empty) before the first request reads them
    return runtime


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
