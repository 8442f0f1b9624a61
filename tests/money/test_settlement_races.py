"""Two settlement workers on one channel, made deterministic by pauses injected at the
worker's stages (in process, eth-tester): a worker still holding the settlement as
``Requested`` whose dry run reverts because another worker's transaction was mined follows
that transaction instead of recording a failure, with the other worker killed after its
broadcast or answered late; the lease keeps a second worker off the channel; a settlement
already failed with a mined transaction (the old bug's end state), a settle made behind the
hub's back, and one with other amounts are found by the next run, the reconcile sweep and
``verify_chain``."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from domain.model.base import Meta
from domain.model.errors import InvalidState, Unavailable
from domain.model.settlement import Settlement, chain_mismatches
from domain.model.voucher import sign_voucher
from ops.bootstrap import build_runtime
from ops.chain_audit import verify_chain
from ops.settings import Settings
from tests.conftest import TEST_SECRET
from tests.money.chain_helpers import funded_key, party, settle_logs
from tests.money.conftest import catch_up
from tests.money.settle_process import NoLease
from tests.money.test_settlement import Hub, _two_seller_channel
from workers.settlement import settle_channel
from workers.settlement_reconcile import reconcile_channel, reconcile_settlements

META = Meta.system("test").as_dict()
WAIT_S = 30


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One embedded hub and chain for the module (each test opens its own channels)."""
    rt = build_runtime(Settings(data_dir=tmp_path_factory.mktemp("races"), secret_hex=TEST_SECRET, bcrypt_rounds=4,
                                hub_url="http://hub.test", log_format="json"))
    yield Hub(rt)
    rt.close()


def _parties(hub: Hub) -> tuple[Any, Any, Any]:
    """A buyer and two sellers with fresh wallets."""
    return tuple(party(hub.client, [role], funded_key(hub.chain, hub.accounts[0]), hub.hub_url)
                 for role in ("buyer", "seller", "seller"))  # type: ignore[return-value]


def _chain_problems(hub: Hub, channel_id: str) -> list[str]:
    return verify_chain(hub.market, hub.chain_client, [channel_id])["problems"]


def _reconcile(hub: Hub, channel_id: str) -> str:
    return reconcile_channel(hub.market, hub.rt.settle_chain(), META, channel_id)


def _event_names(hub: Hub, channel_id: str) -> list[str]:
    settlement = hub.market.settlement.settlement(channel_id)
    return [type(e).__name__ for e in hub.market.repository.event_store.get(settlement.id)]


def _in_thread(fn: Callable[[], str], out: dict[str, Any], name: str, done: threading.Event | None = None) -> Any:
    def run() -> None:
        try:
            out[name] = fn()
        except BaseException as exc:  # reported by the test
            out[name] = exc
        finally:
            if done is not None:
                done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _held_at_signing(hub: Hub, channel_id: str, out: dict[str, Any], **kwargs: Any) -> tuple[Any, threading.Event,
                                                                                             threading.Event]:
    """Worker B, started first: it reads the settlement as Requested and waits before its dry run."""
    ready, go, done = threading.Event(), threading.Event(), threading.Event()

    def pause(stage: str) -> None:
        if stage == "signing":
            ready.set()
            assert go.wait(WAIT_S)

    thread = _in_thread(lambda: settle_channel(hub.rt, channel_id, pause=pause, **kwargs), out, "b", done)
    assert ready.wait(WAIT_S)
    assert hub.market.settlement.settlement(channel_id).status == "requested"
    return thread, go, done


def _assert_settled_once(hub: Hub, channel: dict[str, Any], tx_hash: str) -> None:
    done = hub.market.settlement.settlement(channel["id"])
    assert (done.status, done.tx_hash, len(done.submissions)) == ("confirmed", tx_hash, 1)
    assert "Failed" not in _event_names(hub, channel["id"])
    assert len(settle_logs(hub.chain, hub.deployment.channels, channel["chain_channel_id"])) == 1
    assert hub.market.money.channel(channel["id"]).status == "settled"
    assert _chain_problems(hub, channel["id"]) == []


def test_a_worker_killed_after_its_broadcast_is_followed_not_failed(hub: Hub) -> None:
    buyer, s1, s2 = _parties(hub)
    channel = _two_seller_channel(hub, buyer, s1, s2)
    out: dict[str, Any] = {}
    b, go_b, _ = _held_at_signing(hub, channel["id"], out, lease=NoLease())

    def killed(stage: str) -> None:
        if stage == "submitted":
            raise SystemExit("SIGKILL after the broadcast")

    with pytest.raises(SystemExit):  # worker A: records Submitted, broadcasts (mined at once), dies
        settle_channel(hub.rt, channel["id"], pause=killed, lease=NoLease())
    a_tx = hub.market.settlement.settlement(channel["id"]).live["tx_hash"]
    assert hub.chain_client.receipt(a_tx) == 1 and hub.chain_client.is_settled(channel["chain_channel_id"])
    go_b.set()  # B dry-runs now: "channel not open"
    b.join(WAIT_S)
    assert out["b"] == "confirmed", out
    _assert_settled_once(hub, channel, a_tx)


def test_a_worker_answered_late_finds_its_transaction_confirmed(hub: Hub) -> None:
    buyer, s1, s2 = _parties(hub)
    channel = _two_seller_channel(hub, buyer, s1, s2)
    out: dict[str, Any] = {}
    b, go_b, b_done = _held_at_signing(hub, channel["id"], out, lease=NoLease())
    mined = threading.Event()

    def late_answer(stage: str) -> None:  # A's broadcast "returns" only once B is done
        if stage == "submitted":
            mined.set()
            assert b_done.wait(WAIT_S)

    a = _in_thread(lambda: settle_channel(hub.rt, channel["id"], pause=late_answer, lease=NoLease()), out, "a")
    assert mined.wait(WAIT_S)
    go_b.set()
    b.join(WAIT_S)
    a.join(WAIT_S)
    assert (out["a"], out["b"]) == ("confirmed", "confirmed"), out
    _assert_settled_once(hub, channel, hub.market.settlement.settlement(channel["id"]).submissions[0]["tx_hash"])


def test_the_lease_keeps_a_second_worker_off_the_channel(hub: Hub) -> None:
    buyer, s1, s2 = _parties(hub)
    channel = _two_seller_channel(hub, buyer, s1, s2)
    out: dict[str, Any] = {}
    b, go_b, _ = _held_at_signing(hub, channel["id"], out)  # the runtime's lease (a file lock here)
    with pytest.raises(Unavailable, match="another worker"):
        settle_channel(hub.rt, channel["id"], lease_wait_s=0.3)
    assert hub.market.settlement.settlement(channel["id"]).submissions == []  # A did nothing
    go_b.set()
    b.join(WAIT_S)
    assert out["b"] == "confirmed"
    assert settle_channel(hub.rt, channel["id"], lease_wait_s=0.3) == "confirmed"  # the lease was released


def _the_old_bug(hub: Hub) -> tuple[dict[str, Any], str]:
    """The end state the old worker left: a mined transaction, the settlement Failed for good."""
    buyer, s1, s2 = _parties(hub)
    channel = _two_seller_channel(hub, buyer, s1, s2)

    def killed(stage: str) -> None:
        if stage == "submitted":
            raise SystemExit("killed")

    with pytest.raises(SystemExit):
        settle_channel(hub.rt, channel["id"], pause=killed)
    tx = hub.market.settlement.settlement(channel["id"]).live["tx_hash"]
    hub.market.settlement.record_settlement_failed(META, channel["id"], reason="dry run: channel not open",
                                                   retryable=False, tx_hash=tx)  # the verdict the old code gave
    assert hub.market.money.channel(channel["id"]).status == "closing"
    assert [p.split(": ", 1)[1] for p in _chain_problems(hub, channel["id"])] == [
        f"the contract settled it (tx {tx}) but the ledger says closing"]
    return channel, tx


def test_a_failed_settlement_whose_transaction_was_mined_is_confirmed_by_the_next_run(hub: Hub) -> None:
    channel, tx = _the_old_bug(hub)
    assert settle_channel(hub.rt, channel["id"]) == "confirmed"
    assert hub.market.settlement.settlement(channel["id"]).tx_hash == tx
    assert _chain_problems(hub, channel["id"]) == []


def test_the_reconcile_sweep_records_what_the_chain_did(hub: Hub) -> None:
    channel, tx = _the_old_bug(hub)
    catch_up(hub.rt)
    assert channel["id"] in reconcile_settlements(hub.rt)["recorded"]
    view = hub.market.money.channel(channel["id"]).to_public()
    assert (view["status"], view["settlement_ref"]) == ("settled", tx)
    assert _chain_problems(hub, channel["id"]) == []
    assert _reconcile(hub, channel["id"]) == "ok"


def _settle_behind_the_hubs_back(hub: Hub, channel: dict[str, Any], buyer: Any, *, cumulative: int | None = None
                                 ) -> str:
    """The operator key settles on chain without any worker (``cumulative``: another voucher)."""
    planned = hub.market.settlement.request_settlement(META, channel["id"])
    payees = [p["address"] for p in planned["payees"]]
    amounts = [p["amount_minor"] for p in planned["payees"]]
    total = planned["cumulative_minor"]
    signature = bytes.fromhex(hub.market.money.channel(channel["id"]).voucher_signature.removeprefix("0x"))
    fee = planned["fee_minor"]
    if cumulative is not None:
        fee = cumulative * 500 // 10_000
        amounts, total = [cumulative - fee] + [0] * (len(amounts) - 1), cumulative
        signature = sign_voucher(buyer.key.key, hub.domain, channel["chain_channel_id"], cumulative)
    tx = hub.chain_client.build_and_send_settle(channel["chain_channel_id"], total, signature, payees, amounts, fee)
    hub.chain_client.wait(tx)
    return tx


def test_a_settle_behind_the_hubs_back_that_paid_our_split_is_adopted(hub: Hub) -> None:
    buyer, s1, s2 = _parties(hub)
    channel = _two_seller_channel(hub, buyer, s1, s2)
    tx = _settle_behind_the_hubs_back(hub, channel, buyer)
    assert _chain_problems(hub, channel["id"]) == [
        f"channel {channel['id']}: the contract settled it (tx {tx}) but the ledger says closing"]
    assert _reconcile(hub, channel["id"]) == "recorded"
    settlement = hub.market.settlement.settlement(channel["id"])
    assert (settlement.status, settlement.tx_hash, settlement.adopted) == ("confirmed", tx, True)
    assert _chain_problems(hub, channel["id"]) == []
    assert settle_channel(hub.rt, channel["id"]) == "confirmed"  # nothing more to do


def test_a_settle_behind_the_hubs_back_with_other_amounts_raises_an_alert(hub: Hub) -> None:
    buyer, s1, s2 = _parties(hub)
    channel = _two_seller_channel(hub, buyer, s1, s2)
    _settle_behind_the_hubs_back(hub, channel, buyer, cumulative=400_000)
    assert _reconcile(hub, channel["id"]) == "alert"
    settlement = hub.market.settlement.settlement(channel["id"])
    assert settlement.status == "requested" and "cumulative_minor on chain 400000" in settlement.alert
    assert hub.market.money.channel(channel["id"]).status == "closing"  # the ledger does not guess
    assert _chain_problems(hub, channel["id"])
    assert settle_channel(hub.rt, channel["id"]) == "failed"  # never a second settle, and the alert stays
    assert len(settle_logs(hub.chain, hub.deployment.channels, channel["chain_channel_id"])) == 1
    assert hub.market.settlement.settlement(channel["id"]).to_public()["alert"]


def test_the_settlement_aggregate_never_fails_a_mined_transaction() -> None:
    s = Settlement(id=uuid.uuid4(), meta=META, channel_id="c", chain_channel_id="0x" + "11" * 32,
                   cumulative_minor=100, voucher_signature="0x", seller_account_ids=["s"], payees=["0xAb"],
                   amounts=[95], fee_minor=5, refund_minor=10, currency="TUSD")
    s.submit(META, tx_hash="0xaa", nonce=1, raw_tx="0x01", gas=1)
    s.fail(META, reason="settle transaction reverted in block 3", retryable=False, tx_hash="0xaa")
    assert s.confirm(META, tx_hash="0xaa", block_number=3) is True  # the chain's outcome wins over the failure
    assert (s.status, s.failure) == ("confirmed", None)
    with pytest.raises(InvalidState):
        s.fail(META, reason="late", retryable=False)

    paid = {"cumulative_minor": 100, "fee_minor": 5, "refund_minor": 10, "payees": [["0xab", 95]]}
    assert chain_mismatches(s.expected_payment(), paid) == []
    other = Settlement(id=uuid.uuid4(), meta=META, channel_id="c", chain_channel_id="0x" + "11" * 32,
                       cumulative_minor=100, voucher_signature="0x", seller_account_ids=["s"], payees=["0xab"],
                       amounts=[95], fee_minor=5, refund_minor=10, currency="TUSD")
    with pytest.raises(InvalidState, match="payee 0xcd on chain 95"):
        other.adopt(META, tx_hash="0xbb", block_number=4, paid={**paid, "payees": [["0xcd", 95]]})
    assert other.flag(META, reason="x") is True and other.flag(META, reason="x") is False
    assert other.adopt(META, tx_hash="0xBB", block_number=4, paid=paid) is True
    assert (other.status, other.adopted, other.alert) == ("confirmed", True, "")
