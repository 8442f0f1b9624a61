"""Shared fixtures: real PostgreSQL and Redis on 127.0.0.1 (never skipped), the embedded
SQLite store in a temp dir, and one runtime per test on each store."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder
from falcon import testing
from freezegun.api import FakeDatetime
from psycopg import sql

from api.app import create_app
from api.logging import configure
from domain.app.marketplace import Marketplace
from ops.bootstrap import Runtime, build_runtime
from ops.settings import Settings
from tests.stubs import stripe_stub_fixture  # noqa: F401  (fixture named stripe_stub)


class _FakeDatetimeAsISO(DatetimeAsISO):
    """Under freezegun the library's timestamps are FakeDatetime; store them like datetimes."""

    type = FakeDatetime


_register = Marketplace.register_transcodings


def _register_with_freezegun(self: Marketplace, transcoder: JSONTranscoder) -> None:
    _register(self, transcoder)
    transcoder.register(_FakeDatetimeAsISO())


Marketplace.register_transcodings = _register_with_freezegun  # type: ignore[method-assign]
configure("json")  # as every entry point does: log lines go to stderr, never stdout

PG_URL = os.environ.get("AIMARKET_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AIMARKET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
STORES = ("sqlite", "postgres")
TEST_SECRET = "ab" * 32


def pg_conninfo() -> str:
    return Settings(database_url=PG_URL).pg_conninfo()


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server; a failure to connect fails the test (it is never skipped)."""
    try:
        with psycopg.connect(pg_conninfo(), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL at {PG_URL} is required (run ops/ci/services.sh): {exc}")
    return PG_URL


@pytest.fixture(scope="session")
def redis_server() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is required (run ops/ci/services.sh): {exc}")
    return REDIS_URL


def drop_schema(schema: str) -> None:
    with psycopg.connect(pg_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def make_settings(tmp_path: Path, request: pytest.FixtureRequest):
    """Settings for a fresh store of the given kind; PostgreSQL gets its own schema per test."""
    schemas: list[str] = []

    def factory(store: str, **overrides: object) -> Settings:
        base: dict[str, object] = {"data_dir": tmp_path / "data", "secret_hex": TEST_SECRET, "bcrypt_rounds": 4,
                                   "hub_url": "http://hub.test", "log_format": "json"}
        if store == "postgres":
            request.getfixturevalue("pg_server")
            schema = overrides.pop("db_schema", None) or f"t_{uuid.uuid4().hex[:12]}"
            schemas.append(str(schema))
            base.update(database_url=PG_URL, db_schema=schema)
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]

    yield factory
    for schema in set(schemas):
        drop_schema(schema)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def runtime(make_settings, store: str) -> Iterator[Runtime]:
    rt = build_runtime(make_settings(store))
    yield rt
    rt.close()


@pytest.fixture
def client(runtime: Runtime) -> testing.TestClient:
    return testing.TestClient(create_app(runtime=runtime))
