"""Real processes on loopback: ``aim-node serve`` as a subprocess, buyers in and out of process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from domain.model.delivery import verify_delivery_token
from domain.model.errors import BlockHashMismatch
from domain.model.jcs import canonical_json
from domain.model.keys import SigningKey, b64url, b64url_decode
from domain.model.receipts import check_against_token, verify_confirmation, verify_receipt
from node.delivery.client import DeliveryRefused, fetch, fetch_async
from node.delivery.keys import save_buyer_key
from node.outbox import Outbox
from tests.delivery.rawclient import attempt
from tests.delivery.world import BLOCK, REPO, Node, World, env, verified_blocks, wait_for

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
    node = Node(world, "--max-rate", str(BLOCK * 2))  # about half a second per block
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
        assert world.size <= subject["bytes_sent"] < 2 * world.size
    finally:
        node.stop()


def test_a_node_killed_and_restarted_resumes_the_buyer(world: World, tmp_path: Path) -> None:
    node = Node(world, "--max-rate", str(BLOCK * 2))
    out, results, errors = tmp_path / "out.bin", [], []

    def buyer() -> None:
        try:
            results.append(fetch(world.token(), out, world.buyer_key, world.hub_keys, seller=node.address,
                                 retries=30, backoff_s=0.1))
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
        db = sqlite3.connect(world.home / "delivery.sqlite")
        starts = [row[0] for row in db.execute("SELECT start FROM served ORDER BY session")]
        db.close()
        assert starts[0] == 0 and starts[-1] >= kept * BLOCK
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
    header, payload, signature = good.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["byte_limit"] += 1  # a buyer asking for more than it bought
    tampered = f"{header}.{b64url(canonical_json(claims))}.{signature}"
    foreign_hub = SigningKey.generate()
    from domain.model.delivery import issue_delivery_token

    cases = {
        "expired": (world.token(now=now - 7200, jti="token-expired-000001"), world.buyer_key, None),
        "wrong audience": (world.token(aud="another-device", jti="token-audience-00001"), world.buyer_key, None),
        "tampered": (tampered, world.buyer_key, None),
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
        "tampered": "delivery_token_signature_invalid", "unknown hub key": "delivery_unknown_kid",
        "wrong buyer key": "delivery_cnf_mismatch", "stolen": "delivery_possession_failed",
        "late start": "delivery_start_deadline_passed", "not served": "delivery_not_served",
    }
    assert asyncio.run(attempt(node.port, good, world.buyer_key)) == "accepted"


def test_concurrent_redemptions_bind_exactly_once(world: World, tmp_path: Path) -> None:
    node = Node(world, "--max-per-client", "256", "--max-connections", "256", "--max-rate", str(BLOCK * 4))
    try:
        buyer_b, liar = SigningKey.generate(), SigningKey.generate()
        jti = "token-contested-00001"
        token_a, token_b = world.token(jti=jti), world.token(jti=jti, buyer=buyer_b)

        async def honest(token: str, key: SigningKey, index: int) -> tuple[str, str]:
            who = "a" if key is world.buyer_key else "b"
            try:
                await fetch_async(token, tmp_path / f"{who}-{index}.bin", key, world.hub_keys, seller=node.address,
                                  retries=0)
                return who, "ok"
            except DeliveryRefused as exc:
                return who, exc.code

        async def run_all() -> list[tuple[str, str]]:
            jobs = [honest(token_a, world.buyer_key, i) for i in range(50)]
            jobs += [honest(token_b, buyer_b, i) for i in range(50)]
            jobs += [_liar(token_a, liar) for _ in range(100)]
            return await asyncio.gather(*jobs)

        async def _liar(token: str, key: SigningKey) -> tuple[str, str]:
            return "liar", await attempt(node.port, token, key)

        outcomes = asyncio.run(run_all())
        assert {code for who, code in outcomes if who == "liar"} == {"delivery_cnf_mismatch"}
        winners = {who for who, code in outcomes if code == "ok"}
        assert len(winners) == 1 and sum(code == "ok" for _, code in outcomes) == 1
        loser = ({"a", "b"} - winners).pop()
        assert {code for who, code in outcomes if who == loser} <= {"delivery_token_bound", "delivery_session_active"}
        assert {code for who, code in outcomes if who in winners} <= {"ok", "delivery_session_active"}
        db = sqlite3.connect(world.home / "delivery.sqlite")
        assert db.execute("SELECT count(*) FROM redemptions WHERE jti = ?", (jti,)).fetchone()[0] == 1
        db.close()
        # the bound buyer may come back within the deadline; the other key never gets in
        winner_key, winner_token = (world.buyer_key, token_a) if winners == {"a"} else (buyer_b, token_b)
        loser_key, loser_token = (buyer_b, token_b) if winners == {"a"} else (world.buyer_key, token_a)
        again = fetch(winner_token, tmp_path / "again.bin", winner_key, world.hub_keys, seller=node.address)
        assert (tmp_path / "again.bin").read_bytes() == world.payload and again.receipt is not None
        with pytest.raises(DeliveryRefused) as refused:
            fetch(loser_token, tmp_path / "never.bin", loser_key, world.hub_keys, seller=node.address, retries=0)
        assert refused.value.code == "delivery_token_bound"
        assert "refusal" in _outbox_kinds(world)
    finally:
        node.stop()
