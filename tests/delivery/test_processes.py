"""Real processes on loopback: ``aim-node serve`` as a subprocess, buyers in and out of process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from domain.model.delivery import jwk_thumbprint, verify_delivery_token
from domain.model.errors import BlockHashMismatch
from domain.model.keys import SigningKey, VerifyKey
from domain.model.receipts import check_against_token, verify_confirmation, verify_receipt
from node.delivery.client import DeliveryRefused, fetch, fetch_async
from node.delivery.keys import save_buyer_key
from node.outbox import Outbox
from tests.delivery.rawclient import attempt
from tests.delivery.world import BLOCK, REPO, Node, World, env, served, tampered, verified_blocks, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture
def node(world: World):
    running = Node(world)
    yield running
    running.stop()


def _claims(world: World, token: str):
    return verify_delivery_token(token, world.hub_keys, audience=None, now_s=int(time.time()), require_start=False)


def _outbox_kinds(world: World) -> list[str]:
    outbox = Outbox(world.home / "outbox.sqlite")
    try:
        assert outbox.verify_chain() >= 1
        return [entry.kind for entry in outbox.entries()]
    finally:
        outbox.close()


def test_a_buyer_fetches_a_registered_file_with_a_signed_receipt(world: World, node: Node, tmp_path: Path) -> None:
    token = world.token()
    result = fetch(token, tmp_path / "out.bin", world.buyer_key, world.hub_keys, seller=node.address, retries=0)
    assert (tmp_path / "out.bin").read_bytes() == world.payload
    assert not (tmp_path / "out.bin.partial").exists()
    subject = verify_receipt(result.receipt, device_key=world.device_key.verify_key)
    check_against_token(subject, _claims(world, token))
    assert subject["outcome"] == "complete" and subject["intervals"] == [[0, world.size]]
    assert subject["bytes_sent"] == world.size and subject["blocks_acked"] == 3
    verify_confirmation(result.confirmation, cnf_jkt=_claims(world, token).cnf_jkt)
    wait_for(lambda: "receipt" in _outbox_kinds(world), what="the receipt in the outbox")
    assert _outbox_kinds(world) == ["redemption", "confirmation", "receipt"]


def test_the_cli_fetches_with_a_key_file_and_writes_the_receipt(world: World, node: Node, tmp_path: Path) -> None:
    save_buyer_key(world.buyer_key, tmp_path / "buyer.jwk")
    (tmp_path / "token.jwt").write_text(world.token() + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "fetch", "--token", str(tmp_path / "token.jwt"), "--key",
         str(tmp_path / "buyer.jwk"), "--out", str(tmp_path / "got.bin"), "--seller", node.address, "--hub-key",
         world.hub_key_arg], capture_output=True, text=True, env=env(), cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256((tmp_path / "got.bin").read_bytes()).digest() == hashlib.sha256(world.payload).digest()
    proof = json.loads((tmp_path / "got.bin.receipt.json").read_text())
    assert proof["receipt"]["credentialSubject"]["outcome"] == "complete"
    assert json.loads(done.stdout)["outcome"] == "complete"


def _cli_fetch(world: World, tmp_path: Path, node: Node, out: Path) -> subprocess.Popen:
    save_buyer_key(world.buyer_key, tmp_path / "buyer.jwk")
    (tmp_path / "token.jwt").write_text(world.token())
    return subprocess.Popen(
        [sys.executable, "-m", "node.cli", "fetch", "--token", str(tmp_path / "token.jwt"), "--key",
         str(tmp_path / "buyer.jwk"), "--out", str(out), "--seller", node.address, "--hub-key", world.hub_key_arg,
         "--no-progress"], env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_buyer_killed_mid_transfer_resumes_from_its_last_verified_block(world: World, tmp_path: Path) -> None:
    # paced (about half a second per block): unpaced, loopback's socket buffers would hold the
    # whole 192 KiB object; ops/bench/delivery.py measures the kill with 8 MiB blocks, unpaced
    node = Node(world, "--max-rate", str(BLOCK * 2))
    try:
        out = tmp_path / "out.bin"
        buyer = _cli_fetch(world, tmp_path, node, out)
        wait_for(lambda: verified_blocks(out) >= 1, what="a first verified block")
        buyer.kill()
        buyer.wait(10)
        kept = verified_blocks(out)
        assert 1 <= kept < 3 and not out.exists()
        assert (tmp_path / "out.bin.partial").stat().st_size == kept * BLOCK
        seen: list[int] = []
        result = fetch((tmp_path / "token.jwt").read_text(), out, world.buyer_key, world.hub_keys,
                       seller=node.address, progress=lambda done, total: seen.append(done))
        assert out.read_bytes() == world.payload
        assert seen[0] == (kept + 1) * BLOCK  # no verified block was fetched again
        subject = result.receipt["credentialSubject"]
        assert subject["outcome"] == "complete" and subject["sessions"] == 2
        first, resumed = served(world, _claims(world, world.token()).jti)
        assert first[0] == 0 and resumed == (kept * BLOCK, world.size)  # from the last verified block
        assert subject["bytes_sent"] == first[1] + world.size - kept * BLOCK
        assert subject["bytes_sent"] - world.size <= BLOCK  # at most one block sent twice
    finally:
        node.stop()


def test_a_node_killed_and_restarted_resumes_the_buyer(world: World, tmp_path: Path) -> None:
    node = Node(world, "--max-rate", str(BLOCK * 2))
    out, results, errors, seen = tmp_path / "out.bin", [], [], []

    def buyer() -> None:
        try:
            results.append(fetch(world.token(), out, world.buyer_key, world.hub_keys, seller=node.address,
                                 retries=30, backoff_s=0.1, progress=lambda done, total: seen.append(done)))
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=buyer)
    thread.start()
    try:
        wait_for(lambda: verified_blocks(out) >= 1, what="a first verified block")
        node.kill()
        kept = verified_blocks(out)
        assert kept < 3
        node = Node(world, port=node.port)
        thread.join(60)
        assert not errors and results, errors
        assert out.read_bytes() == world.payload
        subject = results[0].receipt["credentialSubject"]
        assert subject["outcome"] == "complete" and subject["sessions"] >= 2
        assert seen == [BLOCK, 2 * BLOCK, world.size]  # each block verified once, across the kill
        starts = [start for start, _ in served(world, _claims(world, world.token()).jti)]
        # the resume starts at the last block the buyer verified (it may finish one it already
        # held once the node is gone); the node's write-ahead counts what it had reserved
        assert starts[0] == 0 and kept * BLOCK <= starts[-1] <= (kept + 1) * BLOCK
        assert subject["bytes_sent"] - world.size <= BLOCK
    finally:
        thread.join(60)
        node.stop()


def test_a_node_that_sends_a_wrong_block_is_caught_at_that_block(world: World, tmp_path: Path) -> None:
    node = Node(world, script=[sys.executable, str(Path(__file__).with_name("evil_node.py"))])
    try:
        out = tmp_path / "out.bin"
        with pytest.raises(BlockHashMismatch) as caught:
            fetch(world.token(), out, world.buyer_key, world.hub_keys, seller=node.address, retries=0)
        assert caught.value.extra["block"] == 1
        assert verified_blocks(out) == 1 and (tmp_path / "out.bin.partial").stat().st_size == BLOCK
        assert not out.exists()
    finally:
        node.stop()


def test_a_file_changed_on_disk_is_refused_at_the_changed_block(world: World, node: Node, tmp_path: Path) -> None:
    changed = bytearray(world.payload)
    changed[2 * BLOCK + 5] ^= 0xFF
    world.file.write_bytes(bytes(changed))
    out = tmp_path / "out.bin"
    with pytest.raises(DeliveryRefused) as refused:
        fetch(world.token(), out, world.buyer_key, world.hub_keys, seller=node.address, retries=0)
    assert refused.value.code == "delivery_object_changed"
    assert verified_blocks(out) == 2


def test_each_bad_token_is_refused_with_its_own_code(world: World, node: Node) -> None:
    thief, other = SigningKey.generate(), SigningKey.generate()
    now = int(time.time())
    good = world.token()
    foreign_hub = SigningKey.generate()
    from domain.model.delivery import issue_delivery_token

    cases = {
        "expired": (world.token(now=now - 7200, jti="token-expired-000001"), world.buyer_key, None),
        "wrong audience": (world.token(aud="another-device", jti="token-audience-00001"), world.buyer_key, None),
        "tampered": (tampered(good, byte_limit=world.size * 2 + 1), world.buyer_key, None),  # asks for more
        "cnf rewritten": (tampered(world.token(jti="token-cnfswap-000001"), cnf={"jkt": jwk_thumbprint(
            thief.verify_key)}), thief, None),
        "unknown hub key": (issue_delivery_token(world.claims(jti="token-foreignhub-001"), foreign_hub,
                                                 foreign_hub.key_id), world.buyer_key, None),
        "wrong buyer key": (world.token(jti="token-wrongkey-00001"), other, None),
        "stolen": (world.token(jti="token-stolen-0000001"), thief, world.buyer_key.verify_key),
        "late start": (world.token(now=now - 400, jti="token-latestart-0001"), world.buyer_key, None),
        "not served": (world.token(listing_id="00000000-0000-5000-8000-000000000000", jti="token-notserved-001"),
                       world.buyer_key, None),
    }

    async def run_all() -> dict[str, str]:
        return {name: await attempt(node.port, token, key, present=present)
                for name, (token, key, present) in cases.items()}

    codes = asyncio.run(run_all())
    assert codes == {
        "expired": "delivery_token_expired", "wrong audience": "delivery_wrong_audience",
        "tampered": "delivery_token_signature_invalid", "cnf rewritten": "delivery_token_signature_invalid",
        "unknown hub key": "delivery_unknown_kid",
        "wrong buyer key": "delivery_cnf_mismatch", "stolen": "delivery_possession_failed",
        "late start": "delivery_start_deadline_passed", "not served": "delivery_not_served",
    }
    assert asyncio.run(attempt(node.port, good, world.buyer_key)) == "accepted"


# The 1,000 concurrent redemptions of one token (jti): who comes, and what each must get.
STORM_JTI = "token-contested-00001"
HONEST_RIGHT_KEY = 100  # the token's cnf key, real buyers (fetch_async): one wins, the rest wait their turn
HONEST_OTHER_KEY = 100  # ten other keys, each with a validly hub-signed token for the same jti (a double issue)
REFUSED = {  # class: (clients, the one code it must get)
    "other key, not the cnf key": (200, "delivery_cnf_mismatch"),  # presents a key the hub never signed
    "stolen: the cnf public key without its private key": (200, "delivery_possession_failed"),
    "tampered: byte_limit raised": (100, "delivery_token_signature_invalid"),
    "cnf rewritten to the thief's key": (100, "delivery_token_signature_invalid"),  # the signature is what binds cnf
    "expired": (100, "delivery_token_expired"),
    "wrong audience": (100, "delivery_wrong_audience"),
}
STORM_CLIENTS = HONEST_RIGHT_KEY + HONEST_OTHER_KEY + sum(n for n, _ in REFUSED.values())


def _storm_cases(world: World) -> dict[str, tuple[str, SigningKey, VerifyKey | None]]:
    """Each refused class: (token, the key that signs the handshake, the public key presented)."""
    thief = SigningKey.generate()
    token = world.token(jti=STORM_JTI)
    now = int(time.time())
    return {
        "other key, not the cnf key": (token, thief, None),
        "stolen: the cnf public key without its private key": (token, thief, world.buyer_key.verify_key),
        "tampered: byte_limit raised": (tampered(token, byte_limit=2 * world.size + 1), world.buyer_key, None),
        "cnf rewritten to the thief's key": (tampered(token, cnf={"jkt": jwk_thumbprint(thief.verify_key)}), thief,
                                             None),
        "expired": (world.token(jti=STORM_JTI, now=now - 7200), world.buyer_key, None),
        "wrong audience": (world.token(jti=STORM_JTI, aud="another-device"), world.buyer_key, None),
    }


@dataclass
class Storm:
    codes: dict[str, list[str]]  # each class's outcomes
    winner: asyncio.Task  # the one transfer still running
    name: str  # its buyer's name ("a-…": the right key; "b…": another hub-signed key)
    token: str
    key: SigningKey
    other_key: SigningKey  # a key that did not win


async def _storm(world: World, node: Node, tmp_path: Path) -> Storm:
    """All 1,000 clients, arrivals shuffled: the refused ones and half the honest buyers at once,
    the other half as soon as the node has bound the jti (while the rest are still coming in);
    until every one has its answer but the one transfer."""
    others = [SigningKey.generate() for _ in range(10)]
    honest = {f"a-{i}": (world.token(jti=STORM_JTI), world.buyer_key) for i in range(HONEST_RIGHT_KEY)}
    honest |= {f"b{i % 10}-{i}": (world.token(jti=STORM_JTI, buyer=others[i % 10]), others[i % 10])
               for i in range(HONEST_OTHER_KEY)}

    async def buyer(name: str) -> str:
        token, key = honest[name]
        try:
            await fetch_async(token, tmp_path / f"{name}.bin", key, world.hub_keys, seller=node.address, retries=0)
            return "complete"
        except DeliveryRefused as exc:
            return exc.code

    later = set(random.sample(sorted(honest), len(honest) // 2))
    starts: list[tuple[str, Any]] = [(name, lambda n=name: buyer(n)) for name in honest if name not in later]
    starts += [(cls, lambda t=token, k=key, p=shown: attempt(node.port, t, k, present=p))
               for cls, (token, key, shown) in _storm_cases(world).items() for _ in range(REFUSED[cls][0])]
    random.shuffle(starts)  # any honest buyer of the first wave may be the first to bind
    tasks = [(label, asyncio.create_task(start())) for label, start in starts]
    async with asyncio.timeout(30):
        while not served(world, STORM_JTI):
            await asyncio.sleep(0.005)
    tasks += [(name, asyncio.create_task(buyer(name))) for name in random.sample(sorted(later), len(later))]
    fetches = {label: task for label, task in tasks if label in honest}
    codes: dict[str, list[str]] = {cls: [] for cls in REFUSED}
    for label, task in tasks:
        if label in REFUSED:
            codes[label].append(await task)
    running = set(fetches.values())
    async with asyncio.timeout(60):
        while len(running) > 1:
            _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    (winner,) = running
    name = next(n for n, t in fetches.items() if t is winner)
    for n, task in fetches.items():
        if task is not winner:
            group = "winner's key" if n.split("-")[0] == name.split("-")[0] else "other keys"
            codes.setdefault(f"{group}, {'after' if n in later else 'before'} the bind", []).append(task.result())
    token, key = honest[name]
    return Storm(codes, winner, name, token, key, others[0] if name.startswith("a-") else world.buyer_key)


def test_a_thousand_concurrent_redemptions_of_one_token_start_one_transfer(world: World, tmp_path: Path) -> None:
    """1,000 clients redeem one jti at once; one transfer starts, the bound buyer resumes it
    to the right hash with at most one block sent again, every refusal class has its code."""
    assert STORM_CLIENTS == 1000
    limits = ["--max-per-client", "1100", "--max-connections", "1100"]
    # a slow transfer (a block every ~20 s, under the buyer's 30 s idle) outlasts the storm
    node = Node(world, *limits, "--max-rate", str(BLOCK // 20))
    try:
        async def run() -> Storm:
            storm = await _storm(world, node, tmp_path)
            out = tmp_path / f"{storm.name}.bin"
            async with asyncio.timeout(30):
                while verified_blocks(out) < 1:
                    await asyncio.sleep(0.02)  # the winner's first block (the loop must run to get it)
            assert len(served(world, STORM_JTI)) == 1  # exactly one transfer started
            storm.winner.cancel()  # the winner drops mid-transfer
            await asyncio.gather(storm.winner, return_exceptions=True)
            return storm

        storm = asyncio.run(run())
        codes = storm.codes
        for cls, (count, code) in REFUSED.items():
            assert codes[cls] == [code] * count, (cls, set(codes[cls]))
        # one transfer at a time per token; once bound, no other key gets past the binding
        assert set(codes.get("winner's key, before the bind", []) + codes.get("winner's key, after the bind", [])
                   ) == {"delivery_session_active"}
        assert set(codes["other keys, before the bind"]) <= {"delivery_session_active", "delivery_token_bound"}
        assert set(codes["other keys, after the bind"]) == {"delivery_token_bound"}
        # expired, wrong audience, tampered, unsigned cnf (a key the hub never signed) and stolen:
        # each its own code (a cnf rewritten inside the token fails its signature, like any tampering)
        done_when = ["expired", "wrong audience", "tampered: byte_limit raised", "other key, not the cnf key",
                     "stolen: the cnf public key without its private key"]
        assert len({REFUSED[cls][1] for cls in done_when}) == len(done_when)
        db = sqlite3.connect(world.home / "delivery.sqlite")
        assert db.execute("SELECT count(*) FROM redemptions WHERE jti = ?", (STORM_JTI,)).fetchone()[0] == 1
        db.close()
    finally:
        node.stop()
    # the bound buyer resumes (same token and key, same OUT, a node restarted without the rate
    # limit) from its last verified block; any other key stays out
    node = Node(world, *limits)
    try:
        out = tmp_path / f"{storm.name}.bin"
        kept = verified_blocks(out)
        assert 1 <= kept < 3
        result = fetch(storm.token, out, storm.key, world.hub_keys, seller=node.address)
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(world.payload).digest()
        subject = result.receipt["credentialSubject"]
        assert subject["outcome"] == "complete" and subject["sessions"] == 2
        assert served(world, STORM_JTI)[1][0] == kept * BLOCK  # the resume starts at the last verified block
        assert subject["bytes_sent"] - world.size <= BLOCK  # at most one block sent again
        with pytest.raises(DeliveryRefused) as refused:
            fetch(world.token(jti=STORM_JTI, buyer=storm.other_key), tmp_path / "never.bin", storm.other_key,
                  world.hub_keys, seller=node.address, retries=0)
        assert refused.value.code == "delivery_token_bound"
        assert "refusal" in _outbox_kinds(world)
    finally:
        node.stop()


_DIE_AT_HALF = """
import os, signal, sys
from pathlib import Path
from domain.model.keys import VerifyKey
from node.delivery.client import fetch
from node.delivery.keys import load_buyer_key
token, key, out, seller, kid, hub, half = sys.argv[1:]
def progress(done, total):
    if done >= int(half):
        os.kill(os.getpid(), signal.SIGKILL)  # the buyer dies right after a block is durable and acked
fetch(Path(token).read_text(), out, load_buyer_key(key), {kid: VerifyKey.from_multibase(hub)}, seller=seller,
      retries=0, progress=progress)
"""


def test_an_unpaced_buyer_killed_mid_transfer_has_at_most_one_block_sent_again(tmp_path: Path) -> None:
    world = World(tmp_path / "w", size=64 * BLOCK)  # 4 MiB: more than loopback's socket buffers hold in flight
    node = Node(world)
    try:
        save_buyer_key(world.buyer_key, tmp_path / "buyer.jwk")
        (tmp_path / "token.jwt").write_text(world.token())
        out = tmp_path / "out.bin"
        dead = subprocess.run([sys.executable, "-c", _DIE_AT_HALF, str(tmp_path / "token.jwt"), str(tmp_path / "buyer.jwk"),
                               str(out), node.address, world.hub_key.key_id, world.hub_key.verify_key.to_multibase(),
                               str(32 * BLOCK)], env=env(), cwd=REPO, timeout=60)
        assert dead.returncode == -9
        kept = verified_blocks(out)
        assert kept >= 32
        result = fetch(world.token(), out, world.buyer_key, world.hub_keys, seller=node.address)
        assert out.read_bytes() == world.payload
        subject = result.receipt["credentialSubject"]
        first, resumed = served(world, _claims(world, world.token()).jti)
        assert resumed == (kept * BLOCK, world.size)
        assert subject["bytes_sent"] - world.size <= BLOCK, (first, kept)  # at most one block sent twice
    finally:
        node.stop()
