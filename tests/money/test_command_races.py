"""Commands that race a stream of debits on PostgreSQL retry on fresh state instead of
answering 409: a close, a top-up and a settlement each land while 32 threads debit the
same channel through the batcher, as the API takes them (group commit, and with a 0 ms
window one commit per debit). The books balance afterwards: the channel's spend is exactly
the sum of the debits that were acknowledged, each recorded once, and none was recorded
after the close."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
from falcon import testing

from api.app import create_app
from domain.model.base import Meta
from domain.model.errors import InvalidState, MarketError
from ops.bootstrap import build_runtime
from tests.money.chain_helpers import debit as chain_debit
from tests.money.chain_helpers import deposit, open_channel, party
from tests.money.conftest import debit, open_card_channel, person
from tests.stubs import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET
from workers.settlement import settle_channel

THREADS = 32
WARM_S = 0.4  # debits flow this long before the command races them


class DebitStorm:
    """``THREADS`` threads debiting one channel 1 unit at a time until stopped (or refused)."""

    def __init__(self, runtime: Any, buyer_id: str, channel_id: str, seller_id: str) -> None:
        self.runtime, self.buyer_id, self.channel_id, self.seller_id = runtime, buyer_id, channel_id, seller_id
        self.acked: list[tuple[str, int]] = []  # (key, sequence)
        self.refused: list[MarketError] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._threads = [threading.Thread(target=self._debit, args=(n,), daemon=True) for n in range(THREADS)]
        self._loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> DebitStorm:
        before = self.runtime.market.money.channel(self.channel_id)
        self.spent_before, self.count_before = before.spent_minor, before.debit_count
        self._loop_thread.start()
        for t in self._threads:
            t.start()
        time.sleep(WARM_S)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(timeout=10)

    def _debit(self, n: int) -> None:
        meta = Meta(f"account:{self.buyer_id}", f"storm-{n}").as_dict()
        body = {"amount_minor": 1, "seller_account_id": self.seller_id, "purpose": "race"}
        batcher = self.runtime.debit_batcher
        i = 0
        while not self.stop.is_set():
            key = f"{n}-{i}"
            i += 1
            try:
                result = asyncio.run_coroutine_threadsafe(
                    batcher.submit(meta, self.buyer_id, self.channel_id, key, body), self.loop).result(30)
            except InvalidState as exc:  # closed: every later debit is refused too
                self.refused.append(exc)
                time.sleep(0.005)
            except Exception as exc:  # reported by the test
                self.errors.append(exc)
                return
            else:
                self.acked.append((key, result["sequence"]))

    def check_books(self, *, closed: dict[str, Any] | None = None) -> dict[str, Any]:
        """Spent == the acknowledged debits, each recorded once; none recorded after the close
        (``closed``: the close's answer)."""
        assert not self.errors, self.errors[:3]
        channel = self.runtime.market.money.channel(self.channel_id)
        assert channel.spent_minor - self.spent_before == len(self.acked) == channel.debit_count - self.count_before
        assert sorted(seq for _, seq in self.acked) == list(range(self.count_before + 1, channel.debit_count + 1))
        assert all(key in channel.debits for key, _ in self.acked)
        if closed is not None:
            assert channel.debit_count == closed["debits"] and channel.spent_minor == closed["spent_minor"]
            kinds = [type(e).__name__ for e in self.runtime.market.repository.event_store.get(channel.id)]
            assert "Debited" not in kinds[kinds.index("CloseRequested"):], "a debit was recorded after the close"
        assert self.acked, "no debit went through: the race was not run"
        return channel.to_public()


@pytest.fixture
def pg_card(make_settings, stripe_stub, request):
    batch_ms = getattr(request, "param", 2.0)  # 0: the batcher commits each debit alone
    rt = build_runtime(make_settings("postgres", stripe_api_key=DEFAULT_API_KEY, debit_batch_ms=batch_ms,
                                     stripe_webhook_secret=DEFAULT_WEBHOOK_SECRET, stripe_api_base=stripe_stub.url))
    client = testing.TestClient(create_app(runtime=rt))
    buyer, seller = person(client, ["buyer"]), person(client, ["seller"])
    channel_id = open_card_channel(client, stripe_stub, buyer, 10_000_000)[0]
    yield rt, buyer["id"], channel_id, seller["id"]
    rt.close()


@pytest.mark.parametrize("pg_card", [2.0, 0.0], ids=["group-commit", "one-commit-per-debit"], indirect=True)
def test_close_racing_32_debit_threads_wins_without_409(pg_card) -> None:
    rt, buyer_id, channel_id, seller_id = pg_card
    with DebitStorm(rt, buyer_id, channel_id, seller_id) as storm:
        closed = rt.market.money.close_channel(Meta(f"account:{buyer_id}", "close").as_dict(), buyer_id, channel_id)
        time.sleep(0.2)  # debits keep coming after the close: all refused
    view = storm.check_books(closed=closed)
    assert closed["status"] == view["status"] == "settled"  # a card channel settles at once
    assert view["refunded_minor"] == 10_000_000 - view["spent_minor"]
    assert storm.refused


def test_a_close_makes_the_batchers_cached_channel_lose_its_next_commit(money_runtime, money_client,
                                                                       stripe_stub) -> None:
    buyer, seller = person(money_client, ["buyer"]), person(money_client, ["seller"])
    channel_id = open_card_channel(money_client, stripe_stub, buyer, 100)[0]
    assert debit(money_client, buyer, channel_id, seller["id"], 10).status_code == 201  # the batcher caches it
    money_runtime.market.money.close_channel(Meta("t", "t").as_dict(), buyer["id"], channel_id)  # not through it
    late = debit(money_client, buyer, channel_id, seller["id"], 10)
    assert late.status_code == 409 and late.json["code"] == "invalid_state", late.json  # decided on fresh state
    assert money_runtime.debit_batcher.conflicts == 1  # its stale copy lost the version race
    view = money_runtime.market.money.channel(channel_id).to_public()
    assert (view["status"], view["spent_minor"], view["refunded_minor"]) == ("settled", 10, 90)


def test_top_up_racing_32_debit_threads_wins_without_409(pg_card) -> None:
    rt, buyer_id, channel_id, seller_id = pg_card
    intent = {"id": f"pi_{uuid.uuid4().hex[:16]}", "metadata": {"channel_id": channel_id}, "amount_received": 5_000,
              "currency": "usd"}
    with DebitStorm(rt, buyer_id, channel_id, seller_id) as storm:
        credited = rt.market.money.credit_card_payment(Meta("stripe", "top-up").as_dict(), intent)
        time.sleep(0.2)
    view = storm.check_books()
    assert credited["credited"] is True and view["deposit_minor"] == 10_005_000
    assert not storm.refused


@pytest.fixture
def pg_chain(make_settings):
    rt = build_runtime(make_settings("postgres", unsigned_allowance_minor=10_000_000))
    client = testing.TestClient(create_app(runtime=rt))
    hub = rt.market.money.chain()
    dev = rt.chain.dev
    buyer = party(client, ["buyer"], dev.accounts[3], rt.settings.hub_url)
    seller = party(client, ["seller"], dev.accounts[4], rt.settings.hub_url)
    now = int(dev.chain.w3.eth.get_block("latest")["timestamp"])
    tx, _ = deposit(dev.chain, dev.accounts[0], dev.deployment, buyer.key, 1_000_000, now + 7200, hub=hub)
    channel = open_channel(client, buyer, tx).json
    signed = chain_debit(client, buyer, channel, seller, 1_000, cumulative=1_000, domain=hub.domain())
    assert signed.status_code == 201, signed.json
    yield rt, buyer.id, channel["id"], seller.id
    rt.close()


def test_settlement_racing_32_debit_threads_wins_without_409(pg_chain) -> None:
    rt, buyer_id, channel_id, seller_id = pg_chain
    with DebitStorm(rt, buyer_id, channel_id, seller_id) as storm:
        closed = rt.market.money.close_channel(Meta(f"account:{buyer_id}", "close").as_dict(), buyer_id, channel_id)
        status = settle_channel(rt, channel_id)
    view = storm.check_books(closed=closed)
    assert status == "confirmed"
    assert view["status"] == "settled" and view["settled_minor"] == 1_000  # the signed voucher
