"""Purchases on PostgreSQL under contention: one transaction for the debit and the purchase,
and many concurrent buyers of one channel across two processes never overdraw it."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import psycopg
import pytest
from falcon import testing
from psycopg import sql

from api.app import create_app
from domain.model import ledger
from domain.model.channel import Channel
from domain.model.delivery import jwk_thumbprint
from domain.model.keys import SigningKey
from domain.model.purchase import Purchase, purchase_id_for
from ops.bootstrap import build_runtime
from tests.conftest import pg_conninfo
from tests.purchases.conftest import shop_settings
from tests.purchases.shop import Shop

pytestmark = pytest.mark.parametrize("store", ["postgres"])


def test_a_failing_save_records_neither_the_debit_nor_the_purchase(shop, store) -> None:
    seller = shop.seller()
    buyer = shop.buyer(10_000)
    listing_id = shop.listing(seller)
    recorder = shop.market.recorder
    table = sql.SQL("{}.{}").format(sql.Identifier(recorder.datastore.schema),
                                    sql.Identifier(recorder.events_table_name))
    # A fault inside the batch's transaction, after the channel's Debited row went in: the
    # Purchased row is refused by the database.
    with psycopg.connect(pg_conninfo(), autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION pg_temp_fail() RETURNS trigger AS $$ BEGIN "
                     "RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql".replace("pg_temp_fail",
                                                                                          f"{recorder.datastore.schema}.fail_purchase"))
        conn.execute(sql.SQL("CREATE TRIGGER fail_purchase BEFORE INSERT ON {} FOR EACH ROW "
                             "WHEN (NEW.topic LIKE '%Purchase.Purchased') EXECUTE FUNCTION {}.fail_purchase()").format(
            table, sql.Identifier(recorder.datastore.schema)))
    head = recorder.max_notification_id()
    key = SigningKey.generate()
    r = shop.buy(buyer, listing_id, key="k-fail", buyer_key=key)
    assert (r.status_code, r.json["code"]) == (503, "unavailable")
    assert recorder.max_notification_id() == head
    assert not shop.market.exists(purchase_id_for(buyer["id"], "k-fail"))
    assert shop.market.load(Channel, uuid.UUID(buyer["channel_id"])).spent_minor == 0
    with psycopg.connect(pg_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TRIGGER fail_purchase ON {}").format(table))
    again = shop.buy(buyer, listing_id, key="k-fail", buyer_key=key)  # the retry is safe
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "false"
    assert shop.channel(buyer)["spent_minor"] == 1999


@pytest.fixture
def two_processes(make_settings, stripe_stub, store):
    schema = f"t_{uuid.uuid4().hex[:12]}"
    runtimes = [build_runtime(shop_settings(make_settings, store, stripe_stub, db_schema=schema)) for _ in range(2)]
    yield [Shop(rt, testing.TestClient(create_app(runtime=rt)), stripe_stub) for rt in runtimes]
    for rt in runtimes:
        rt.close()


def test_concurrent_purchases_on_one_channel_never_overdraw_and_the_books_balance(two_processes, store) -> None:
    a, b = two_processes
    seller = a.seller()
    price, affordable = 700, 9
    buyer = a.buyer(price * affordable + 300)
    listings = [a.listing(seller, price_minor=price) for _ in range(3)]
    outcomes: list[Any] = []
    lock = threading.Lock()

    def buyers(shop: Shop, side: str) -> None:  # one process: 12 concurrent clients, 2 purchases each
        def client(n: int):
            async def run(conductor) -> None:
                for i in range(2):
                    body = {"listing_id": listings[(n + i) % 3], "channel_id": buyer["channel_id"],
                            "buyer_jkt": jwk_thumbprint(SigningKey.generate().verify_key)}
                    r = await conductor.simulate_post("/v1/purchases", json=body, headers={
                        **buyer["headers"], "Idempotency-Key": f"{side}-{n}-{i}"})
                    with lock:
                        outcomes.append((r.status_code, r.json.get("code"), r.json.get("id")))
            return run

        async def main() -> None:
            async with testing.ASGIConductor(create_app(runtime=shop.runtime)) as conductor:
                await asyncio.gather(*(client(n)(conductor) for n in range(12)))

        asyncio.run(main())  # each process its own event loop, on its own thread

    threads = [threading.Thread(target=buyers, args=(shop, side)) for shop, side in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    statuses = sorted((s, c) for s, c, _ in outcomes)
    assert len(outcomes) == 48
    assert statuses.count((201, None)) == affordable, statuses
    assert {s for s in statuses if s != (201, None)} <= {(402, "channel_exhausted"), (409, "conflict")}
    channel = a.market.load(Channel, uuid.UUID(buyer["channel_id"]))
    assert channel.spent_minor == price * affordable <= channel.deposit_minor
    assert channel.fee_minor == price * affordable * 500 // 10_000  # the cumulative fee rule
    bought = [i for s, _, i in outcomes if s == 201]
    assert len(set(bought)) == affordable
    assert sum(a.market.load(Purchase, uuid.UUID(i)).fee_minor for i in bought) == channel.fee_minor
    a.catch_up()
    rows = a.runtime.views.fetchall("SELECT * FROM ledger_balances")
    ledger.check_balances({(r["account"], r["currency"]): int(r["balance_minor"]) for r in rows})
    listed = a.runtime.views.fetchall("SELECT purchase_id FROM purchases")
    assert {r["purchase_id"] for r in listed} == set(bought)
