"""The pieces ``ops/bench/delivery.py`` is made of: the bench world (hub key, node home,
registered objects, tokens), node processes, /proc readings, the plain record cipher of the
raw baseline, the crypto-only loop and the handshake rounds."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.model import frames as fr
from domain.model.blocks import check_block, split_hashes
from domain.model.delivery import DeliveryClaims, issue_delivery_token, jwk_thumbprint, verify_delivery_token
from domain.model.errors import FrameInvalid, InvalidInput, MarketError, StreamTruncated
from domain.model.handshake import ClientHandshake
from domain.model.jcs import canonical_json
from domain.model.keys import KxPrivateKey, SigningKey, b64url
from domain.model.receipts import issue_confirmation
from node import keystore as ks
from node.delivery.keys import save_buyer_key
from node.delivery.wire import DeliveryRefused, expect_plain, read_record, send, u32
from node.publishing import register_object
from ops.bench.common import Tally

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "bench passphrase, not a secret"
HUB_URL = "http://hub.invalid"  # never contacted: the node is given the hub key with --hub-key
SMALL_BYTES = 4096  # the handshake part's object: one 4 KiB block
TIMEOUT_S = 30.0
BENCH = Path(__file__).with_name("delivery.py")


def child_command(role: str, cipher: str, args: list[str]) -> list[str]:
    """The bench launcher: ``delivery.py _node|_fetch --cipher C -- <aim-node arguments>``; the
    transfer runs and their baselines start both processes through it, so only the cipher differs."""
    return [sys.executable, str(BENCH), role, "--cipher", cipher, "--", *args]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.005) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(poll_s)


def verified_blocks(out: Path) -> int:
    """The buyer's durable progress: ``OUT.partial.json``'s verified block count."""
    try:
        return int(json.loads(out.with_name(out.name + ".partial.json").read_text())["verified_blocks"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


# -- /proc ---------------------------------------------------------------------------------------------
def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_kb(pid: int) -> int:
    """``VmHWM`` (peak resident set) of a live process, in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


# -- the world -----------------------------------------------------------------------------------------
def make_object(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes at ``path``, kept between runs (made only when missing)."""
    if path.exists() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * 2**20))
            fh.write(chunk)
            left -= len(chunk)
    os.replace(tmp, path)
    return path


@dataclass
class BenchWorld:
    """A hub key, one seller node home with two registered objects, one buyer key and home."""

    run_dir: Path
    file: Path
    size: int
    block_size: int
    hub_key: SigningKey = field(default_factory=SigningKey.generate)
    device_key: SigningKey = field(default_factory=SigningKey.generate)
    device_kx: KxPrivateKey = field(default_factory=KxPrivateKey.generate)
    buyer_key: SigningKey = field(default_factory=SigningKey.generate)
    device_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    listing_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    small_listing_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @classmethod
    def make(cls, data_dir: Path, size: int, block_size: int) -> BenchWorld:
        file = make_object(data_dir / f"delivery-{size // 2**20}m.bin", size)
        run_dir = data_dir / f"run-{uuid.uuid4().hex[:8]}"
        world = cls(run_dir, file, size, block_size)
        world.setup()
        return world

    def setup(self) -> None:
        self.home.mkdir(parents=True)
        self.buyer_home.mkdir()
        ks.create(self.home / "keystore.json", PASSPHRASE, device_id=self.device_id, hub_url=HUB_URL,
                  signing_key=self.device_key, kx_key=self.device_kx, ops_limit=ks.TEST_OPS_LIMIT,
                  mem_limit=ks.TEST_MEM_LIMIT)  # only the node's start-up unlock is cheaper
        self.delivery = register_object(self.home, self.listing_id, self.file, block_size=self.block_size)
        small_dir = self.run_dir / "small"
        small_dir.mkdir()
        small = small_dir / "small.bin"
        small.write_bytes(os.urandom(SMALL_BYTES))
        self.small = register_object(self.home, self.small_listing_id, small, block_size=SMALL_BYTES)
        self.key_file = self.run_dir / "buyer.jwk"
        save_buyer_key(self.buyer_key, self.key_file)

    @property
    def home(self) -> Path:
        return self.run_dir / "node"

    @property
    def buyer_home(self) -> Path:
        return self.run_dir / "buyer"

    @property
    def blocks(self) -> int:
        return self.delivery["blocks"]["count"]

    @property
    def hub_keys(self) -> dict[str, Any]:
        return {self.hub_key.key_id: self.hub_key.verify_key}

    @property
    def hub_key_arg(self) -> str:
        return f"{self.hub_key.key_id}={self.hub_key.verify_key.to_multibase()}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "AIM_NODE_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(ROOT)}

    def serve_args(self, port: int = 0) -> list[str]:
        return ["--home", str(self.home), "serve", "--offline", "--listen", f"127.0.0.1:{port}", "--hub-key", self.hub_key_arg,
                "--max-connections", "1024", "--max-per-client", "1024"]

    def token(self, *, buyer: SigningKey | None = None, small: bool = False) -> str:
        now, buyer = int(time.time()), buyer or self.buyer_key
        obj = self.small if small else self.delivery
        claims = {
            "iss": HUB_URL, "aud": self.device_id, "sub": f"purchase-{uuid.uuid4().hex[:12]}",
            "jti": b64url(secrets.token_bytes(16)), "iat": now, "start_by": now + 600, "exp": now + 7200,
            "listing_id": self.small_listing_id if small else self.listing_id, "listing_version": 1,
            "content_hash": obj["object_hash"], "size_bytes": obj["size_bytes"], "byte_limit": 2 * obj["size_bytes"],
            "blocks": obj["blocks"], "cnf": {"jkt": jwk_thumbprint(buyer.verify_key)},
            "seller_keys": {"ed25519": self.device_key.verify_key.to_multibase(),
                            "x25519": self.device_kx.public_key.to_multibase()},
        }
        return issue_delivery_token(claims, self.hub_key, self.hub_key.key_id)

    def buyer_files(self, token: str | None) -> tuple[Path, Path]:
        token_file = self.run_dir / f"token-{uuid.uuid4().hex[:8]}.jwt"
        token_file.write_text(token or self.token())
        return token_file, self.key_file

    def close(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


class NodeProcess:
    """``aim-node serve`` (through the bench launcher) as a process on a loopback port."""

    def __init__(self, world: BenchWorld, command: list[str]) -> None:
        self.log = world.run_dir / f"node-{uuid.uuid4().hex[:6]}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=world.env(), cwd=ROOT,
                                         text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"node did not start: {self.log.read_text()[-2000:]}")
        self.address = json.loads(line)["listening"]
        self.port = int(self.address.rsplit(":", 1)[1])
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc.stdout.close()


# -- the raw baseline's record "cipher" ----------------------------------------------------------------
_PAD = {tag: bytes(fr.ABYTES - 1) + bytes([tag]) for tag in (fr.TAG_MESSAGE, fr.TAG_FINAL)}


class PlainSealer:
    """``FrameSealer`` with the secretstream push replaced by appending a zero 17-byte tag (the
    last byte says message/final), so frames keep their sizes and every other step its work."""

    def __init__(self, key: bytes) -> None:
        if len(key) != fr.KEY_BYTES:
            raise InvalidInput("a secretstream key is 32 bytes")
        self.header = bytes(fr.STREAM_HEADER_BYTES)
        self._closed = False

    def start_frame(self) -> bytes:
        return fr.plain_frame(fr.STREAM_START, self.header)

    def seal(self, frame_type: int, plaintext: bytes) -> bytes:
        if self._closed or frame_type not in fr.SEALED_TYPES:
            raise InvalidInput("the stream is closed or the type is not sealed")
        if len(plaintext) + fr.ABYTES > fr.max_payload(frame_type):
            raise InvalidInput("frame payload too large")
        final = frame_type in fr.FINAL_TYPES
        self._closed = final
        header = fr.HEADER.pack(frame_type, len(plaintext) + fr.ABYTES)
        return header + plaintext + _PAD[fr.TAG_FINAL if final else fr.TAG_MESSAGE]


class PlainOpener:
    """``FrameOpener`` for :class:`PlainSealer`'s records (strips the tag instead of pulling)."""

    def __init__(self, key: bytes, header: bytes) -> None:
        if len(key) != fr.KEY_BYTES or len(header) != fr.STREAM_HEADER_BYTES:
            raise InvalidInput("a secretstream key is 32 bytes and its header 24")
        self.finished = False

    def open(self, frame_type: int, ciphertext: bytes) -> fr.Record:
        if self.finished or frame_type not in fr.SEALED_TYPES:
            raise FrameInvalid("a record after the end, or not a sealed type")
        if len(ciphertext) > fr.max_payload(frame_type) or len(ciphertext) < fr.ABYTES:
            raise FrameInvalid("record length out of range")
        final = ciphertext[-1] == fr.TAG_FINAL
        if final != (frame_type in fr.FINAL_TYPES):
            raise FrameInvalid("record tag does not match its frame type")
        self.finished = final
        return fr.Record(frame_type, ciphertext[: -fr.ABYTES])

    def close(self) -> None:
        if not self.finished:
            raise StreamTruncated("the stream ended before its final record")


def install_plain_cipher() -> None:
    """Replace the record cipher in this process (server.py and client.py call ``fr.FrameSealer``)."""
    fr.FrameSealer = PlainSealer  # type: ignore[misc, assignment]
    fr.FrameOpener = PlainOpener  # type: ignore[misc, assignment]


# -- baseline b: the crypto alone ----------------------------------------------------------------------
def crypto_loop(path: Path, block_size: int, record_size: int = fr.DEFAULT_RECORD) -> dict[str, Any]:
    """Seller's block hash, encrypt, decrypt, buyer's block hash, for every block of ``path``."""
    key = secrets.token_bytes(fr.KEY_BYTES)
    sealer = fr.FrameSealer(key)
    opener = fr.FrameOpener(key, sealer.header)
    fd = os.open(path, os.O_RDONLY)
    size, done = os.fstat(fd).st_size, 0
    started = time.perf_counter()
    try:
        while done < size:
            block = os.pread(fd, block_size, done)
            hashlib.sha256(block).digest()  # the seller re-checks each block it reads
            buyer = hashlib.sha256()
            for pos in range(0, len(block), record_size):
                frame = sealer.seal(fr.DATA, block[pos : pos + record_size])
                buyer.update(opener.open(fr.DATA, frame[fr.HEADER_BYTES :]).payload)
            buyer.digest()
            done += len(block)
    finally:
        os.close(fd)
    return {"seconds": time.perf_counter() - started, "bytes": done}


# -- handshakes with redemption --------------------------------------------------------------------------
@dataclass
class Op:
    token: str
    claims: DeliveryClaims
    key: SigningKey
    hashes: list[bytes] = field(default_factory=list)


async def redeem(port: int, op: Op, resume_block: int) -> str:
    """One buyer: handshake, the node binds (or admits the resume), the block, ack, confirmation,
    the node's receipt. ``ok`` or the code that stopped it."""
    c = op.claims
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2 * fr.MAX_RECORD)
    except OSError:
        return "connect_failed"
    try:
        hs = ClientHandshake(claims=c, buyer_key=op.key, eph=KxPrivateKey.generate(), nonce=secrets.token_bytes(32),
                             now_ms=wall_ms(), resume_block=resume_block)
        await send(writer, fr.plain_frame(fr.CLIENT_HELLO, hs.hello), TIMEOUT_S)
        finish, session = hs.receive_server_hello(await expect_plain(reader, fr.SERVER_HELLO, TIMEOUT_S), wall_ms())
        await send(writer, fr.plain_frame(fr.CLIENT_FINISH, finish), TIMEOUT_S)
        sealer = fr.FrameSealer(session.send_key)
        await send(writer, sealer.start_frame(), TIMEOUT_S)
        opener = fr.FrameOpener(session.recv_key, await expect_plain(reader, fr.STREAM_START, TIMEOUT_S))
        record = await read_record(reader, opener, TIMEOUT_S)
        hashes = split_hashes(record.payload[4:])
        for index in range(resume_block, c.blocks.count):
            record = await read_record(reader, opener, TIMEOUT_S)
            check_block(index, record.payload, hashes, c.size_bytes, c.blocks.block_size)
            await send(writer, sealer.seal(fr.ACK, u32(index + 1)), TIMEOUT_S)
        subject = {"purchase_id": c.sub, "jti": c.jti, "device_id": c.aud, "content_hash": c.content_hash,
                   "size_bytes": c.size_bytes, "blocks_root": c.raw["blocks"]["root"],
                   "session": b64url(session.session_id), "blocks_verified": c.blocks.count,
                   "received_at_ms": wall_ms()}
        confirmation = issue_confirmation(subject, op.key, now_ms=wall_ms(), nonce=secrets.token_urlsafe(18))
        await send(writer, sealer.seal(fr.END, canonical_json(confirmation)), TIMEOUT_S)
        record = await read_record(reader, opener, TIMEOUT_S)
        outcome = record.json()["credentialSubject"]["outcome"] if record.type == fr.END else record.name
        return "ok" if outcome == "complete" else f"receipt {outcome}"
    except DeliveryRefused as exc:
        return exc.code
    except MarketError as exc:
        return f"error {exc.code}"
    except OSError as exc:
        return f"os_error {type(exc).__name__}"
    finally:
        writer.close()


async def _run_ops(port: int, ops: list[Op], clients: int, resume: bool) -> tuple[Tally, float]:
    tally, queue = Tally("ok"), list(reversed(ops))

    async def worker() -> None:
        while queue:
            op = queue.pop()
            t0 = time.perf_counter()
            label = await redeem(port, op, op.claims.blocks.count if resume else 0)
            tally.add(label, time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return tally, time.perf_counter() - started


def redeem_run(node_pid: int, port: int, ops: list[Op], clients: int, resume: bool) -> dict[str, Any]:
    cpu0 = proc_cpu_s(node_pid)
    tally, elapsed = asyncio.run(_run_ops(port, ops, clients, resume))
    cpu = proc_cpu_s(node_pid) - cpu0
    summary = tally.summary(elapsed)
    return {"ops_per_s": round(tally.successes / elapsed, 1), "ok": tally.successes, "seconds": round(elapsed, 2),
            "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"], "statuses": summary["statuses"],
            "node_cpu_s": round(cpu, 2),
            "node_cpu_us_per_op": round(cpu / tally.successes * 1e6) if tally.successes else None}


def verify_rate(seconds: float) -> float:
    """Raw Ed25519 verifications per second (pynacl), one thread, a 72-byte message like the
    handshake's signed inputs."""
    import nacl.signing

    key = nacl.signing.SigningKey.generate()
    signed = key.sign(secrets.token_bytes(72))
    verify, done = key.verify_key.verify, 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(200):
            verify(signed)
        done += 200
    return round(done / elapsed)


def handshake_round(world: BenchWorld, clients: int, count: int, verify_s: float, leads: str) -> dict[str, Any]:
    """Fresh tokens, then resumes of the same tokens, on one fresh node; and the verify loop
    before (``leads == "verify"``) or after them."""
    ops = []
    for _ in range(count):
        key = SigningKey.generate()
        token = world.token(buyer=key, small=True)
        claims = verify_delivery_token(token, world.hub_keys, audience=None, now_s=int(time.time()),
                                       require_start=False)
        ops.append(Op(token, claims, key))
    result: dict[str, Any] = {"clients": clients, "ops": count, "leads": leads}
    if leads == "verify":
        result["ed25519_verify_per_s"] = verify_rate(verify_s)
    node = NodeProcess(world, child_command("_node", "secretstream", world.serve_args()))
    try:
        result["fresh"] = redeem_run(node.pid, node.port, ops, clients, resume=False)
        result["resume"] = redeem_run(node.pid, node.port, ops, clients, resume=True)
        result["node_peak_rss_mb"] = round(proc_peak_rss_kb(node.pid) / 1024, 1)
    finally:
        node.stop()
    if leads != "verify":
        result["ed25519_verify_per_s"] = verify_rate(verify_s)
    result["load"] = " ".join(open("/proc/loadavg").read().split()[:3])
    return result


if __name__ == "__main__":
    sys.exit("run ops/bench/delivery.py")
