"""Runner locks: one active projection runner per name, across processes and hosts.

Embedded: an exclusive ``flock`` on a file in the data dir. PostgreSQL: a session advisory
lock on a dedicated connection that also LISTENs for the event table's NOTIFY.
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
from pathlib import Path
from typing import Any


class FileRunnerLock:
    """Exclusive, non-blocking ``flock`` on a file: one runner per projection per data dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None
        self._idle = threading.Event()

    def acquire(self) -> bool:
        if self._fh is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self._fh = fh
        return True

    def wait_for_events(self, timeout_s: float) -> None:
        self._idle.wait(timeout_s)

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class PgRunnerLock:
    """A dedicated session holding ``pg_try_advisory_lock`` and LISTENing for new events.

    If the session dies the lock is gone with it; the runner notices on its next wait,
    and takes the lock again (or stands by) after reconnecting.
    """

    def __init__(self, conninfo: str, name: str, channel: str) -> None:
        self.conninfo = conninfo
        self.key = int.from_bytes(hashlib.sha256(f"projection:{name}".encode()).digest()[:8], "big", signed=True)
        self.channel = channel
        self.conn: Any = None

    def acquire(self) -> bool:
        import psycopg
        from psycopg import sql

        if self.conn is not None and not self.conn.closed:
            return True
        self.conn = psycopg.connect(self.conninfo, autocommit=True)
        got = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
        if not got:
            self.release()
            return False
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        return True

    def wait_for_events(self, timeout_s: float) -> None:
        for _ in self.conn.notifies(timeout=timeout_s, stop_after=1):
            pass
        self.conn.execute("SELECT 1")  # raises here if the session (and so the lock) is lost

    def release(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None
