"""On-chain channels in process (eth-tester): funding from the contract's own event, wallet
binding, voucher-covered debits, and the settlement worker (intent -> submitted -> confirmed,
one on-chain close however often it runs or wherever it stopped, never past the window)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from falcon import testing

from api.app import create_app
from domain.model import ledger
from domain.model.errors import InvalidState
from ops.adapters.broker import settlement_sender
from ops.adapters.evm import wallet
from ops.adapters.evm.evm import advance_time
from ops.bootstrap import build_runtime
from tests.money.chain_helpers import (
    BUYER_MINT,
    Party,
    bind,
    debit,
    deposit,
    open_channel,
    party,
    settle_logs,
    wallet_signature,
    withdraw_all,
)
from tests.money.conftest import catch_up, person
from workers.jobs import Jobs
from workers.settlement import SETTLE_QUEUE, settle_channel, sweep_settlements

GRACE_S = 24 * 3600


class Hub:
    """A hub runtime on an in-process chain, with its dev accounts and API client."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.market = rt.market
        self.client = testing.TestClient(create_app(runtime=rt))
        self.chain_client = rt.market.money.chain()
        dev = rt.chain.dev
        self.chain, self.deployment, self.accounts = dev.chain, dev.deployment, dev.accounts
        self.domain = self.chain_client.domain()
        self.hub_url = rt.settings.hub_url

    def now(self) -> int:
        return int(self.chain.w3.eth.get_block("latest")["timestamp"])

    def funded_channel(self, buyer: Party, amount: int, expiry_in_s: int = 7200) -> dict[str, Any]:
        tx, _ = deposit(self.chain, self.accounts[0], self.deployment, buyer.key, amount, self.now() + expiry_in_s,
                        hub=self.chain_client)
        r = open_channel(self.client, buyer, tx)
        assert r.status_code == 201, r.json
        return r.json

    def operator_nonce(self) -> int:
        return int(self.chain.w3.eth.get_transaction_count(self.accounts[1].address))


@pytest.fixture
def hub(make_settings):
    rt = build_runtime(make_settings("sqlite"))
    yield Hub(rt)
    rt.close()


def _parties(hub: Hub) -> tuple[Party, Party, Party]:
    a = hub.accounts
    return (party(hub.client, ["buyer"], a[3], hub.hub_url), party(hub.client, ["seller"], a[4], hub.hub_url),
            party(hub.client, ["seller"], a[5], hub.hub_url))


def _two_seller_channel(hub: Hub, buyer: Party, s1: Party, s2: Party, deposit_minor: int = 1_000_000) -> dict:
    channel = hub.funded_channel(buyer, deposit_minor)
    for seller, amount, cumulative in ((s1, 300_000, 300_000), (s2, 200_001, 500_001)):
        r = debit(hub.client, buyer, channel, seller, amount, cumulative=cumulative, domain=hub.domain)
        assert r.status_code == 201, r.json
    closed = hub.client.simulate_post(f"/v1/channels/{channel['id']}/close", headers=buyer.headers)
    assert closed.status_code == 200 and closed.json["status"] == "closing", closed.json
    return channel


def test_settle_pays_sellers_platform_and_buyer_exactly_once(hub: Hub) -> None:
    buyer, s1, s2 = _parties(hub)
    before = hub.chain_client.token_balance(buyer.key.address) + BUYER_MINT
    channel = _two_seller_channel(hub, buyer, s1, s2)
    assert settle_channel(hub.rt, channel["id"]) == "confirmed"
    assert settle_channel(hub.rt, channel["id"]) == "confirmed"  # a redelivered message does nothing
    settlement = hub.market.settlement.settlement(channel["id"]).to_public()
    assert len(settlement["submissions"]) == 1 and settlement["tx_hash"] == settlement["tx_hash"].lower()
    # fees: floor(300000 * 5%) + floor(200001 * 5%) = 15000 + 10000
    assert [p["amount_minor"] for p in settlement["payees"]] == [
        {s1.id: 285_000, s2.id: 190_001}[p["seller_account_id"]] for p in settlement["payees"]]
    assert (settlement["fee_minor"], settlement["refund_minor"]) == (25_000, 499_999)
    assert len(settle_logs(hub.chain, hub.deployment.channels, channel["chain_channel_id"])) == 1

    a = hub.accounts
    withdraw_all(hub.chain_client, s1.key.address, s2.key.address, a[2].address, buyer.key.address)
    assert hub.chain_client.token_balance(s1.key.address) == 285_000
    assert hub.chain_client.token_balance(s2.key.address) == 190_001
    assert hub.chain_client.token_balance(a[2].address) == 25_000
    assert hub.chain_client.token_balance(buyer.key.address) == before - 500_001
    assert hub.chain_client.token_balance(hub.deployment.channels) == 0

    view = hub.market.money.channel(channel["id"]).to_public()
    assert (view["status"], view["settled_minor"], view["refunded_minor"]) == ("settled", 500_001, 499_999)
    assert view["settlement_ref"] == settlement["tx_hash"]
    catch_up(hub.rt)
    rows = hub.rt.views.fetchall("SELECT * FROM ledger_balances")
    balances = {(r["account"], r["currency"]): int(r["balance_minor"]) for r in rows}
    ledger.check_balances(balances)
    assert balances[(f"seller:{s1.id}:payable", "TUSD")] == 0
    assert balances[("platform:fees", "TUSD")] == 25_000


def test_restart_after_recording_rebroadcasts_the_same_transaction(hub: Hub) -> None:
    buyer, s1, s2 = _parties(hub)
    channel = _two_seller_channel(hub, buyer, s1, s2)

    def crash(stage: str) -> None:
        if stage == "recorded":
            raise SystemExit("killed before broadcast")

    with pytest.raises(SystemExit):
        settle_channel(hub.rt, channel["id"], pause=crash)
    recorded = hub.market.settlement.settlement(channel["id"])
    assert recorded.status == "submitted" and hub.chain_client.receipt(recorded.live["tx_hash"]) is None
    assert settle_channel(hub.rt, channel["id"]) == "confirmed"
    done = hub.market.settlement.settlement(channel["id"])
    assert done.tx_hash == recorded.live["tx_hash"] and len(done.submissions) == 1
    assert len(settle_logs(hub.chain, hub.deployment.channels, channel["chain_channel_id"])) == 1


def test_a_nonce_taken_by_another_transaction_is_replaced(hub: Hub) -> None:
    buyer, s1, s2 = _parties(hub)
    channel = _two_seller_channel(hub, buyer, s1, s2)

    def steal_nonce(stage: str) -> None:
        if stage == "recorded":  # another operator tx uses the recorded nonce first
            hub.chain_client.wait(hub.chain_client.withdraw_for(hub.accounts[2].address))
            raise SystemExit("killed before broadcast")

    with pytest.raises(SystemExit):
        settle_channel(hub.rt, channel["id"], pause=steal_nonce)
    assert settle_channel(hub.rt, channel["id"]) == "confirmed"
    done = hub.market.settlement.settlement(channel["id"])
    assert len(done.submissions) == 2 and done.tx_hash == done.submissions[1]["tx_hash"]
    assert done.submissions[1]["nonce"] == done.submissions[0]["nonce"] + 1
    assert len(settle_logs(hub.chain, hub.deployment.channels, channel["chain_channel_id"])) == 1


def test_no_settlement_attempted_past_the_window(hub: Hub) -> None:
    buyer, s1, s2 = _parties(hub)
    channel = _two_seller_channel(hub, buyer, s1, s2)
    advance_time(hub.chain, 7200 + GRACE_S + 1)  # the buyer's reclaim window is open
    nonce = hub.operator_nonce()
    assert settle_channel(hub.rt, channel["id"]) == "failed"
    settlement = hub.market.settlement.settlement(channel["id"]).to_public()
    assert settlement["failure"] == {"reason": "settle window closed", "retryable": False}
    assert settlement["submissions"] == [] and hub.operator_nonce() == nonce
    assert hub.market.money.channel(channel["id"]).status == "closing"
    catch_up(hub.rt)
    assert sweep_settlements(hub.rt, lambda cid: None) == []  # not retried by the sweep either


def test_sweep_closes_near_expiry_and_settles(hub: Hub) -> None:
    buyer, s1, _ = _parties(hub)
    near = hub.funded_channel(buyer, 100_000, expiry_in_s=1800)  # inside the 1 h margin
    far = hub.funded_channel(buyer, 100_000, expiry_in_s=30 * 24 * 3600)
    unsigned = hub.funded_channel(buyer, 100_000, expiry_in_s=600)
    assert debit(hub.client, buyer, near, s1, 40_000, cumulative=40_000, domain=hub.domain).status_code == 201
    catch_up(hub.rt)
    queued: list[str] = []
    assert sweep_settlements(hub.rt, queued.append) == [near["id"]]
    assert hub.market.money.channel(unsigned["id"]).status == "settled"  # nothing signed: settled internally
    assert hub.market.money.channel(far["id"]).status == "open"
    assert settle_channel(hub.rt, near["id"]) == "confirmed"
    assert hub.market.money.channel(near["id"]).to_public()["refunded_minor"] == 60_000


def test_settlement_refused_for_an_open_channel(hub: Hub) -> None:
    buyer, _, _ = _parties(hub)
    channel = hub.funded_channel(buyer, 10_000)
    with pytest.raises(InvalidState):
        hub.market.settlement.request_settlement({"actor": "system", "correlation_id": "t", "causation_id": ""}, channel["id"])


def test_chain_funding_is_credited_once_to_the_depositor_only(hub: Hub) -> None:
    buyer, _, _ = _parties(hub)
    stranger = party(hub.client, ["buyer"], hub.accounts[6], hub.hub_url)
    tx, _ = deposit(hub.chain, hub.accounts[0], hub.deployment, buyer.key, 50_000, hub.now() + 3600,
                    hub=hub.chain_client)
    theirs = open_channel(hub.client, stranger, tx)
    assert theirs.status_code == 403 and theirs.json["code"] == "wallet_mismatch"
    ok = open_channel(hub.client, buyer, tx)
    assert ok.status_code == 201 and ok.json["deposit_minor"] == 50_000
    upper = open_channel(hub.client, buyer, "0x" + tx[2:].upper())
    assert upper.status_code == 409 and upper.json["code"] == "deposit_already_credited"
    # A reverted open (no allowance) credits nothing.
    reverted = wallet.open_channel(hub.chain, stranger.key, hub.deployment.channels, "0x" + "77" * 32, 1_000,
                                   hub.now() + 3600, simulate=False)
    assert hub.chain_client.receipt(reverted) == 0
    refused = open_channel(hub.client, stranger, reverted)
    assert refused.status_code == 422
    listed = hub.client.simulate_get("/v1/channels", headers=stranger.headers)
    assert listed.status_code == 200
    no_wallet = person(hub.client, ["buyer"])
    r = hub.client.simulate_post("/v1/channels", json={"rail": "chain", "tx_hash": tx},
                                 headers={**no_wallet["headers"], "Idempotency-Key": "open-no-wallet"})
    assert r.status_code == 409 and r.json["code"] == "wallet_required"


def test_wallet_binding_checks_the_signature(hub: Hub) -> None:
    a = hub.accounts
    who = person(hub.client, ["buyer"])
    forged = wallet_signature(a[7], who["id"], hub.hub_url, address=a[3].address)  # signed by another key
    for signature in (forged, "0x" + "00" * 65, wallet_signature(a[3], "someone-else", hub.hub_url)):
        r = hub.client.simulate_post("/v1/me/wallet", headers=who["headers"],
                                     json={"address": a[3].address, "signature": signature})
        assert r.status_code == 401 and r.json["code"] == "signature_invalid", r.json
    bound = bind(hub.client, who, a[3], hub.hub_url)
    again = hub.client.simulate_post("/v1/me/wallet", headers=who["headers"], json={
        "address": a[3].address, "signature": wallet_signature(a[3], bound.id, hub.hub_url)})
    assert again.status_code == 201  # the same binding again is fine
    other = hub.client.simulate_post("/v1/me/wallet", headers=who["headers"], json={
        "address": a[8].address, "signature": wallet_signature(a[8], bound.id, hub.hub_url)})
    assert other.status_code == 409
    assert hub.client.simulate_get("/v1/me/wallet", headers=who["headers"]).json["address"] == a[3].address


def test_debit_needs_a_covering_voucher(hub: Hub) -> None:
    buyer, s1, _ = _parties(hub)
    channel = hub.funded_channel(buyer, 100_000)
    bare = debit(hub.client, buyer, channel, s1, 10_000, cumulative=None, domain=hub.domain)
    assert bare.status_code == 422 and bare.json["param"] == "voucher", bare.json
    short = debit(hub.client, buyer, channel, s1, 10_000, cumulative=9_999, domain=hub.domain)
    assert short.status_code == 422
    forged = debit(hub.client, buyer, channel, s1, 10_000, cumulative=10_000, domain=hub.domain,
                   signer=hub.accounts[6])
    assert forged.status_code == 401 and forged.json["code"] == "signature_invalid"
    ok = debit(hub.client, buyer, channel, s1, 10_000, cumulative=10_000, domain=hub.domain)
    assert ok.status_code == 201 and ok.json["fee_minor"] == 500
    view = hub.market.money.channel(channel["id"]).to_public()
    assert (view["spent_minor"], view["voucher_minor"]) == (10_000, 10_000)


def test_settlement_aggregate_allows_one_live_transaction() -> None:
    import uuid

    from domain.model.settlement import Settlement

    meta = {"actor": "system", "correlation_id": "t", "causation_id": ""}
    s = Settlement(id=uuid.uuid4(), meta=meta, channel_id="c", chain_channel_id="0x" + "11" * 32,
                   cumulative_minor=100, voucher_signature="0x", seller_account_ids=["s"], payees=["0xp"],
                   amounts=[95], fee_minor=5, refund_minor=0, currency="TUSD")
    assert s.submit(meta, tx_hash="0xAA", nonce=7, raw_tx="0x01", gas=1) is True
    assert s.submit(meta, tx_hash="0xaa", nonce=7, raw_tx="0x01", gas=1) is False  # same tx, any case
    with pytest.raises(InvalidState):  # a second live transaction is refused (a racing worker)
        s.submit(meta, tx_hash="0xbb", nonce=8, raw_tx="0x02", gas=1)
    with pytest.raises(InvalidState):
        s.confirm(meta, tx_hash="0xcc", block_number=3)
    with pytest.raises(InvalidState):  # not the attempt's failure while a transaction is live (it may be mined)
        s.fail(meta, reason="dry run: channel not open", retryable=False)
    with pytest.raises(InvalidState):  # a verdict names the live transaction
        s.fail(meta, reason="reverted", retryable=False, tx_hash="0xbb")
    s.fail(meta, reason="nonce 7 used by another transaction", retryable=True, tx_hash="0xAA")
    assert s.submit(meta, tx_hash="0xbb", nonce=8, raw_tx="0x02", gas=1) is True
    assert s.confirm(meta, tx_hash="0xbb", block_number=9) is True
    assert s.confirm(meta, tx_hash="0xbb", block_number=9) is False
    with pytest.raises(InvalidState):
        s.fail(meta, reason="late", retryable=False)


@pytest.mark.redis
def test_close_over_the_api_queues_the_settlement_for_a_worker(hub: Hub, redis_server) -> None:
    """The API's close sends ``settle_channel`` through Redis; a Dramatiq worker settles
    at once (the cron sweep is only the safety net)."""
    namespace = f"aimarket-test-{uuid.uuid4().hex[:8]}"
    hub.rt.enqueue_settlement = settlement_sender(redis_server, namespace)
    hub.client = testing.TestClient(create_app(hub.rt))  # resources take the queue when built
    broker = RedisBroker(url=redis_server, namespace=namespace)
    Jobs(broker, lambda: hub.rt)
    worker = Worker(broker, worker_timeout=100)
    worker.start()
    try:
        buyer, s1, s2 = _parties(hub)
        channel = _two_seller_channel(hub, buyer, s1, s2)  # closed through the API
        broker.join(SETTLE_QUEUE, timeout=60_000)
        worker.join()
        assert hub.market.settlement.settlement(channel["id"]).status == "confirmed"
        assert len(settle_logs(hub.chain, hub.deployment.channels, channel["chain_channel_id"])) == 1
    finally:
        worker.stop()
        broker.close()


def test_api_processes_queue_settlements_only_with_redis(make_settings, redis_server) -> None:
    with_redis = build_runtime(make_settings("postgres", redis_url=redis_server))
    embedded = build_runtime(make_settings("sqlite"))
    try:
        assert with_redis.enqueue_settlement is not None and embedded.enqueue_settlement is None
    finally:
        with_redis.close()
        embedded.close()
