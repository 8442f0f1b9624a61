"""What every bench shares: services from settings, a quiet-machine gate, the loopback HTTP
client, and honest counting (only successes count; every other outcome is in a breakdown).

Services come from ``ops.settings.load_settings()``: ``AIMARKET_DATABASE_URL`` and
``AIMARKET_REDIS_URL``. ``--test-services`` points them at the test services instead
(``AIMARKET_TEST_DATABASE_URL`` / ``AIMARKET_TEST_REDIS_URL``, by default the loopback
PostgreSQL database ``test`` and Redis database 0 that ``ops/ci/services.sh`` starts). No
bench has a URL of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ops.settings import Settings, load_settings

TEST_DATABASE_URL = "postgresql://root@127.0.0.1:5432/test"  # only behind --test-services
TEST_REDIS_URL = "redis://127.0.0.1:6379/0"  # only behind --test-services
SERVICES_HELP = ("use the test services instead of AIMARKET_DATABASE_URL / AIMARKET_REDIS_URL: "
                 f"AIMARKET_TEST_DATABASE_URL (default {TEST_DATABASE_URL}) and AIMARKET_TEST_REDIS_URL "
                 f"(default {TEST_REDIS_URL}), as the test suite does")


# -- settings ------------------------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser, *, services: bool = True) -> None:
    if services:
        parser.add_argument("--test-services", action="store_true", help=SERVICES_HELP)
    parser.add_argument("--quiet-load", type=float, default=0.0, metavar="LOAD",
                        help="before measuring, wait until the 1-minute load average is below LOAD "
                             "(polled every 30 s, at most --quiet-wait-s); 0 = do not wait (default)")
    parser.add_argument("--quiet-wait-s", type=float, default=1500, help="longest wait for a quiet machine")


def service_env(args: argparse.Namespace, *, redis: bool = False) -> dict[str, str]:
    """The environment the bench (and every process it starts) reads its settings from."""
    env = dict(os.environ)
    if getattr(args, "test_services", False):
        env["AIMARKET_DATABASE_URL"] = env.get("AIMARKET_TEST_DATABASE_URL") or TEST_DATABASE_URL
        if redis:
            env["AIMARKET_REDIS_URL"] = env.get("AIMARKET_TEST_REDIS_URL") or TEST_REDIS_URL
    if not redis:
        env.pop("AIMARKET_REDIS_URL", None)
    return env


def postgres_settings(env: Mapping[str, str]) -> Settings:
    settings = load_settings(env)
    if settings.embedded:
        raise SystemExit("no PostgreSQL configured: set AIMARKET_DATABASE_URL, or pass --test-services "
                         "to use the test database (see --help)")
    return settings


def fresh_schema(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextmanager
def bench_schema(settings: Settings) -> Iterator[Settings]:
    """Create ``settings.db_schema`` (it must not exist: the bench only ever drops a schema it
    made) on ``settings``' database, and drop it afterwards through the same settings."""
    import psycopg
    from psycopg import sql

    if not settings.db_schema.startswith("bench_"):
        raise SystemExit(f"refusing to use schema {settings.db_schema!r}: bench schemas start with bench_")
    name = sql.Identifier(settings.db_schema)
    with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
    try:
        yield settings
    finally:
        with psycopg.connect(settings.pg_conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))


# -- a quiet machine -----------------------------------------------------------------------
def load1() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, max_wait_s: float, poll_s: float = 30.0) -> dict[str, Any]:
    """Wait (up to ``max_wait_s``) until the 1-minute load is below ``max_load``; what it was."""
    started = time.monotonic()
    if max_load <= 0:
        return {"load1_at_start": round(load1(), 2), "waited_s": 0}
    while (now := load1()) >= max_load and time.monotonic() - started < max_wait_s:
        print(f"# load {now:.2f} >= {max_load}: waiting for a quiet machine "
              f"({time.monotonic() - started:.0f} s so far)", flush=True)
        time.sleep(poll_s)
    waited = round(time.monotonic() - started)
    quiet = load1() < max_load
    print(f"# load {load1():.2f} ({'quiet' if quiet else 'NOT quiet: gave up waiting'}) after {waited} s",
          flush=True)
    return {"load1_at_start": round(load1(), 2), "waited_s": waited, "quiet": quiet}


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


# -- counting --------------------------------------------------------------------------------
@dataclass
class Tally:
    """Latencies of successful operations, and a count of every outcome by label."""

    ok: str  # the label of success, e.g. "201"
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)

    def add(self, label: str, seconds: float) -> None:
        self.outcomes[label] += 1
        if label == self.ok:
            self.latencies.append(seconds)

    def merge(self, other: Tally) -> None:
        self.latencies.extend(other.latencies)
        self.outcomes.update(other.outcomes)

    @property
    def successes(self) -> int:
        return self.outcomes[self.ok]

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        q = quantiles_ms(self.latencies)
        return {"ok_per_s": round(self.successes / elapsed_s) if elapsed_s else 0, "ok": self.successes,
                "not_ok": sum(self.outcomes.values()) - self.successes, **q,
                "statuses": dict(sorted(self.outcomes.items()))}


def quantiles_ms(samples: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 in ms of ``samples`` (seconds); None when there are too few to say."""
    if len(samples) < 2:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1000, 2), "p95_ms": round(q[94] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# -- the loopback HTTP/1.1 client ------------------------------------------------------------
async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """Send one request on a keep-alive connection and read the answer: (status, body)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    body = await reader.readexactly(length)
    return int(head.split(b" ", 2)[1]), body


def outcome_label(status: int, body: bytes, ok: int) -> str:
    """``"201"`` for a success, else the status with the problem ``code`` (``"409 conflict"``)."""
    if status == ok:
        return str(status)
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        code = None
    return f"{status} {code}" if code else str(status)


async def closed_loop(port: int, clients: int, seconds: float, make_request: Callable[[int, int], bytes], ok: int,
                      on_success: Callable[[int, int], None] | None = None, warm_s: float = 1.0) -> dict[str, Any]:
    """``clients`` keep-alive connections to 127.0.0.1:``port``, one request in flight each,
    for ``seconds`` after ``warm_s`` of warm-up (not counted); ``make_request(client, i)``.
    Only answers with status ``ok`` count as done work (``on_success(client, i)`` each,
    warm-up included); every answer is in the breakdown."""
    warm = Tally(str(ok))
    timed = Tally(str(ok))

    async def one(n: int, stop_at: float, tally: Tally) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = 0
        try:
            while time.perf_counter() < stop_at:
                request = make_request(n, i)
                t0 = time.perf_counter()
                status, body = await round_trip(reader, writer, request)
                label = outcome_label(status, body, ok)
                tally.add(label, time.perf_counter() - t0)
                if status == ok and on_success is not None:
                    on_success(n, i)
                i += 1
        finally:
            writer.close()

    if warm_s > 0:
        stop = time.perf_counter() + warm_s
        await asyncio.gather(*(one(n, stop, warm) for n in range(clients)))
    start = time.perf_counter()
    await asyncio.gather(*(one(10_000 + n, start + seconds, timed) for n in range(clients)))
    elapsed = time.perf_counter() - start
    return {**timed.summary(elapsed), "seconds": round(elapsed, 2), "warm_up_statuses": dict(warm.outcomes)}


def health_request(_n: int, _i: int) -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"


def wait_http_ok(url: str, proc: Any, tries: int = 300) -> None:
    import requests

    for _ in range(tries):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before answering {url}")
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not answer {url}")
