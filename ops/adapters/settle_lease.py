"""Settlement leases: one settlement worker at a time per channel, across processes and hosts
(port: ``domain.model.ports.SettlementLease``).

PostgreSQL: a session advisory lock on a connection of its own, opened for the hold. The
lock lives exactly as long as the session: a holder SIGKILLed or crashed closes its socket
and PostgreSQL ends the session at once; a holder whose host vanished is found dead by TCP
keepalives (asked of the server for this session: idle 10 s, then 3 probes 5 s apart), so
the lease frees itself within ~25 s. Embedded: an exclusive ``flock`` on a file per lease
under the data dir, released by the kernel when the holder's process dies.

A waiter polls (no blocking call that a lost holder could keep waiting) and gives up after
``wait_s`` with ``Unavailable``: the job is retried later, from whatever the holder recorded.
"""

from __future__ import annotations

import fcntl
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from domain.model.errors import Unavailable

POLL_S = 0.05
KEEPALIVES = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"


def lease_key(name: str) -> int:
    """The advisory-lock key of a lease name (64-bit signed, from SHA-256)."""
    return int.from_bytes(hashlib.sha256(f"lease:{name}".encode()).digest()[:8], "big", signed=True)


class PgLease:
    """Leases as PostgreSQL session advisory locks, one dedicated connection per hold."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo

    @contextmanager
    def hold(self, name: str, wait_s: float) -> Iterator[None]:
        import psycopg

        key = lease_key(name)
        conn = psycopg.connect(self.conninfo, autocommit=True, options=KEEPALIVES, keepalives=1,
                               keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
        try:
            deadline = time.monotonic() + wait_s
            while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                if time.monotonic() >= deadline:
                    raise Unavailable(f"another worker holds {name}; retry later")
                time.sleep(POLL_S)
            yield
        finally:
            conn.close()  # ends the session, and so the lock (no unlock round trip needed)


class FileLease:
    """Leases as exclusive ``flock``s on files under ``directory`` (one host, embedded)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextmanager
    def hold(self, name: str, wait_s: float) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.lock"
        with path.open("a") as fh:  # its own open file description: threads exclude each other too
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Unavailable(f"another worker holds {name}; retry later") from None
                    time.sleep(POLL_S)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
