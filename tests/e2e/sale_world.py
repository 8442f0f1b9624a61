"""What the end-to-end sale test stands on: a payload marker and every form it could take on
the way, a recording TCP proxy in front of the hub, a Redis ``MONITOR`` tap, and dumps of
everything the hub keeps (its PostgreSQL schema, its Redis database, its files).

The proxy relays raw TCP on loopback (no HTTP library in the path), so what it records is
every byte of every hub request and response as the clients and the hub sent them.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import math
import os
import secrets
import socket
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
from psycopg import sql

MARKER_BYTES = 32


def _b64_windows(data: bytes) -> list[bytes]:
    """The base64 text that ``data`` becomes inside any larger base64-encoded run, at each of
    the three byte alignments (standard and URL alphabets): a block that contains ``data``
    encodes to text that contains one of these."""
    found = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data)
        # Characters mixing pad (or following) bits with ``data``'s bits are dropped.
        window = encoded[math.ceil(8 * offset / 6):(8 * (offset + len(data))) // 6]
        found += [window, window.translate(bytes.maketrans(b"+/", b"-_"))]
    return found


def _redis_repr(data: bytes) -> bytes:
    """How Redis ``MONITOR`` prints these bytes (``sdscatrepr``)."""
    escapes = {b"\\"[0]: b"\\\\", b'"'[0]: b'\\"', b"\n"[0]: b"\\n", b"\r"[0]: b"\\r", b"\t"[0]: b"\\t",
               7: b"\\a", 8: b"\\b"}
    return b"".join(escapes.get(c, bytes([c]) if 32 <= c < 127 else b"\\x%02x" % c) for c in data)


@dataclass
class Marker:
    """32 random bytes; the payload holds them raw and as lowercase hex text.

    ``needles`` are what a leak would look like: each half (16 bytes, or 32 hex characters:
    still unique, and a leak split at a chunk boundary still holds one whole half) of the raw
    bytes and of the hex text, each raw, as hex (lower and upper: how PostgreSQL prints
    ``bytea``), in base64 and base64url at every alignment (a base64-encoded block that
    contains the marker), as Python's and Redis' escaped reprs.
    """

    raw: bytes = field(default_factory=lambda: secrets.token_bytes(MARKER_BYTES))

    @property
    def hex(self) -> bytes:
        return self.raw.hex().encode()

    @property
    def needles(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for source, whole in (("raw", self.raw), ("hex", self.hex)):
            half = len(whole) // 2
            for part, piece in (("first half", whole[:half]), ("second half", whole[half:])):
                name = f"{source} {part}"
                out[name] = piece
                out[f"{name} as hex"] = piece.hex().encode()
                out[f"{name} as HEX"] = piece.hex().upper().encode()
                out[f"{name} as python repr"] = repr(piece)[2:-1].encode()
                out[f"{name} as redis repr"] = _redis_repr(piece)
                for i, window in enumerate(_b64_windows(piece)):
                    out[f"{name} as base64{'url' if i % 2 else ''} at offset {i // 2}"] = window
        return {name: needle for name, needle in out.items() if len(needle) >= 16}

    def found_in(self, data: bytes) -> list[str]:
        """The names of the needles ``data`` contains (empty: no trace of the marker)."""
        return [name for name, needle in self.needles.items() if needle in data]


# -- the recording proxy ---------------------------------------------------------------------

@dataclass
class Capture:
    """One client connection through the proxy: the bytes each way, in order."""

    client: str
    request: bytearray = field(default_factory=bytearray)
    response: bytearray = field(default_factory=bytearray)


class RecordingProxy:
    """A TCP relay on 127.0.0.1 in front of ``target_port``, on its own event loop thread,
    recording every byte both ways per connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.captures: list[Capture] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="recording-proxy", daemon=True)
        self.port = 0

    def start(self) -> RecordingProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        capture = Capture(client=str(writer.get_extra_info("peername")))
        self.captures.append(capture)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()  # the hub is not up yet: the client sees a refused connection
            return
        try:
            await asyncio.gather(self._pump(reader, up_writer, capture.request),
                                 self._pump(up_reader, writer, capture.response))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bytearray) -> None:
        while data := await source.read(65536):
            record += data
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()  # a half-close travels on: the other direction may still be talking

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [task for task in self._tasks if not task.done()]
            for task in tasks:
                task.cancel()
            if tasks:  # let each connection close its sockets before the loop stops
                await asyncio.wait(tasks, timeout=5)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def _decoded(body: bytes, headers: dict[str, str]) -> bytes:
    coding = headers.get("content-encoding", "identity").lower()
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "deflate":
        return zlib.decompress(body)
    assert coding == "identity", f"a content-encoding this test cannot read: {coding}"
    return body


def http_messages(stream: bytes, *, responses: bool) -> Iterator[tuple[bytes, bytes]]:
    """Split one direction of an HTTP/1.1 connection into ``(head, body)`` pairs, bodies
    de-chunked and decoded, so a marker split by chunk framing or hidden by a content-coding
    would still be seen. Fails on anything it cannot account for, byte for byte."""
    at = 0
    while at < len(stream):
        end = stream.find(b"\r\n\r\n", at)
        assert end >= 0, f"an unterminated HTTP head: {stream[at:at + 200]!r}"
        head = stream[at:end]
        at = end + 4
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(lines[0].split(" ")[1]) if responses else 0
        if responses and (100 <= status < 200 or status in (204, 304)):
            yield head, b""
            continue
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                line_end = stream.index(b"\r\n", at)
                size = int(stream[at:line_end].split(b";")[0], 16)
                at = line_end + 2
                if size == 0:
                    at = stream.index(b"\r\n\r\n", at - 2) + 4  # no trailers expected; skip any
                    break
                body += stream[at:at + size]
                at += size + 2
            yield head, _decoded(bytes(body), headers)
        elif "content-length" in headers:
            size = int(headers["content-length"])
            assert at + size <= len(stream), "a body cut short"
            yield head, _decoded(stream[at:at + size], headers)
            at += size
        elif responses:  # the body runs to the end of the connection
            yield head, _decoded(stream[at:], headers)
            at = len(stream)
        else:
            yield head, b""


# -- Redis ----------------------------------------------------------------------------------

def free_redis_db(base_url: str) -> str:
    """The URL of an empty Redis database (1..15) on the test server: the hub's alone, so what
    is in it at the end is what the hub wrote, and MONITOR lines name it."""
    base = base_url.rsplit("/", 1)[0]
    for db in secrets.SystemRandom().sample(range(1, 16), 15):
        if redis.Redis.from_url(f"{base}/{db}").dbsize() == 0:
            return f"{base}/{db}"
    raise AssertionError("no empty Redis database in 1..15 for the hub")


class RedisMonitor:
    """``MONITOR`` on a raw socket, on a thread; keeps the lines about one database."""

    def __init__(self, url: str) -> None:
        client = redis.Redis.from_url(url)
        kwargs = client.connection_pool.connection_kwargs
        self.db = int(kwargs.get("db", 0))
        self._sock = socket.create_connection((kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379)), 5)
        self._sock.settimeout(None)
        self.lines: list[bytes] = []
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._read, name="redis-monitor", daemon=True)

    def start(self) -> RedisMonitor:
        self._sock.sendall(b"MONITOR\r\n")
        self._thread.start()
        assert self.ready.wait(10), "Redis did not start MONITOR"
        return self

    def _read(self) -> None:
        tag = f"[{self.db} ".encode()
        pending = b""
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            pending += data
            *lines, pending = pending.split(b"\r\n")
            for line in lines:
                if line == b"+OK":
                    self.ready.set()
                elif tag in line[:64]:
                    self.lines.append(line)

    def stop(self) -> bytes:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(10)
        return b"\n".join(self.lines)


def redis_dump(url: str) -> bytes:
    """Every key of the database and its value, whatever its type, as bytes."""
    r = redis.Redis.from_url(url)
    out = bytearray()
    for key in r.scan_iter(count=500):
        kind = r.type(key).decode()
        out += b"\n" + key + b" " + kind.encode() + b" "
        if kind == "string":
            out += r.get(key) or b""
        elif kind == "list":
            out += b" ".join(r.lrange(key, 0, -1))
        elif kind == "set":
            out += b" ".join(r.smembers(key))
        elif kind == "zset":
            out += b" ".join(m for m, _ in r.zrange(key, 0, -1, withscores=True))
        elif kind == "hash":
            out += b" ".join(k + b"=" + v for k, v in r.hgetall(key).items())
        elif kind == "stream":
            out += repr(r.xrange(key)).encode()
        out += r.dump(key) or b""
    return bytes(out)


# -- PostgreSQL and files ----------------------------------------------------------------------

def pg_dump(conninfo: str, schema: str) -> tuple[bytes, dict[str, int]]:
    """Every row of every table of ``schema`` as PostgreSQL's text form, then every ``bytea``
    value as its bytes (the text form shows those as hex); and the row count per table."""
    out, counts = bytearray(), {}
    with psycopg.connect(conninfo) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "AND table_type = 'BASE TABLE' ORDER BY table_name", (schema,))]
        for table in tables:
            name = sql.Identifier(schema, table)
            rows = conn.execute(sql.SQL("SELECT t::text FROM {} t").format(name)).fetchall()
            counts[table] = len(rows)
            out += b"\n".join(row[0].encode() for row in rows)
            for (column,) in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                    "AND table_name = %s AND data_type = 'bytea'", (schema, table)).fetchall():
                query = sql.SQL("SELECT {} FROM {}").format(sql.Identifier(column), name)
                out += b"\n".join(bytes(v) for (v,) in conn.execute(query) if v is not None)
    return bytes(out), counts


def files_under(folder: Path) -> bytes:
    """The bytes of every file under ``folder`` (the hub's data directory)."""
    out = bytearray()
    for path in sorted(folder.rglob("*")) if folder.exists() else []:
        if path.is_file() and not path.is_symlink():
            out += path.read_bytes()
    return bytes(out)


def blocks_holding(data: bytes, needle: bytes, block_size_bytes: int) -> set[int]:
    """The indexes of the delivery blocks in which ``needle`` starts."""
    found, at = set(), data.find(needle)
    while at >= 0:
        found.add(at // block_size_bytes)
        at = data.find(needle, at + 1)
    return found


def env_without_proxies() -> dict[str, str]:
    """This environment, minus any HTTP proxy setting: every client must reach the hub on
    loopback through the recording proxy, never through one configured outside the test."""
    return {k: v for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
