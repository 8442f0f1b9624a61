"""Channels through the HTTP API on both stores: card funding by a verified webhook,
debits with idempotency, 402 when exhausted, close with refund, balances, and 64
concurrent clients that never overdraw and never lose an acknowledged debit."""

from __future__ import annotations

import uuid
from collections import defaultdict

from domain.model import ledger
from tests.helpers import run_concurrently
from tests.money.conftest import catch_up, deliver_webhook, open_card_channel, person
from tests.stubs import payment_intent_succeeded_event


def _debit(client, buyer, channel_id, seller_id, amount, key=None):
    return client.simulate_post(f"/v1/channels/{channel_id}/debits",
                                json={"amount_minor": amount, "seller_account_id": seller_id, "purpose": "listing:1"},
                                headers={**buyer["headers"], "Idempotency-Key": key or uuid.uuid4().hex})


def test_card_channel_debit_close_and_balances(money_client, money_runtime, stripe_stub) -> None:
    buyer, seller = person(money_client, ["buyer"]), person(money_client, ["seller"])
    channel_id, webhook = open_card_channel(money_client, stripe_stub, buyer, 10_000)
    # A replayed webhook changes nothing; a forged one is refused.
    again = deliver_webhook(money_client, webhook)
    assert again.status_code == 200 and again.json["credited"] is False
    forged = deliver_webhook(money_client, webhook, secret="whsec_forged")
    assert forged.status_code == 401 and forged.json["code"] == "signature_invalid"

    r = _debit(money_client, buyer, channel_id, seller["id"], 1_999, key="k1")
    assert r.status_code == 201 and r.json["fee_minor"] == 99 and r.headers["Idempotent-Replayed"] == "false"
    same = _debit(money_client, buyer, channel_id, seller["id"], 1_999, key="k1")
    assert same.status_code == 201 and same.json == r.json and same.headers["Idempotent-Replayed"] == "true"
    other = _debit(money_client, buyer, channel_id, seller["id"], 5, key="k1")
    assert other.status_code == 409 and other.json["code"] == "idempotency_key_reused"
    broke = _debit(money_client, buyer, channel_id, seller["id"], 9_000)
    assert broke.status_code == 402 and broke.json["code"] == "channel_exhausted"
    missing = money_client.simulate_post(f"/v1/channels/{channel_id}/debits", headers=buyer["headers"],
                                         json={"amount_minor": 1, "seller_account_id": seller["id"]})
    assert missing.status_code == 422

    stranger = person(money_client, ["buyer"])
    assert _debit(money_client, stranger, channel_id, seller["id"], 1).status_code == 404

    closed = money_client.simulate_post(f"/v1/channels/{channel_id}/close", headers=buyer["headers"])
    assert closed.status_code == 200 and closed.json["status"] == "settled"
    assert closed.json["refunded_minor"] == 10_000 - 1_999
    assert _debit(money_client, buyer, channel_id, seller["id"], 1).status_code == 409

    catch_up(money_runtime)
    mine = {row["account"]: row["balance_minor"] for row in
            money_client.simulate_get("/v1/balances", headers=seller["headers"]).json["items"]}
    assert mine == {f"seller:{seller['id']}:payable": 1_900}
    everything = money_runtime.views.fetchall("SELECT * FROM ledger_balances")
    ledger.check_balances({(r["account"], r["currency"]): int(r["balance_minor"]) for r in everything})
    assert {r["account"]: int(r["balance_minor"]) for r in everything}["platform:fees"] == 99
    listed = money_client.simulate_get("/v1/channels", headers=buyer["headers"]).json["items"]
    assert [c["channel_id"] for c in listed] == [channel_id] and listed[0]["status"] == "settled"


def test_webhook_for_unknown_or_mismatched_intent(money_client, stripe_stub) -> None:
    buyer = person(money_client, ["buyer"])
    channel_id, _ = open_card_channel(money_client, stripe_stub, buyer, 500)
    fake = {"id": "pi_unknown", "amount": 500, "currency": "eur", "metadata": {"channel_id": channel_id}}
    r = deliver_webhook(money_client, payment_intent_succeeded_event(fake))
    assert r.status_code == 422  # currency of another channel: refused, nothing credited
    view = money_client.simulate_get(f"/v1/channels/{channel_id}", headers=buyer["headers"]).json
    assert view["deposit_minor"] == 500


def test_64_concurrent_clients_never_overdraw(money_client, money_runtime, stripe_stub) -> None:
    buyer, seller = person(money_client, ["buyer"]), person(money_client, ["seller"])
    channels = [open_card_channel(money_client, stripe_stub, buyer, 3_000)[0] for _ in range(2)]
    acknowledged: dict[str, int] = defaultdict(int)

    def client(n: int):
        async def loop(conductor) -> None:
            for i in range(6):
                channel_id = channels[(n + i) % 2]
                key = f"c{n}-{i}"
                amount = 7 + (n % 5)
                for _ in range(30):  # a client retries a 409 with the SAME key: never charged twice
                    r = await _debit(conductor, buyer, channel_id, seller["id"], amount, key=key)
                    if r.status_code != 409:
                        break
                if r.status_code == 201:
                    # Retry once more: the answer must be the same and charge nothing.
                    again = await _debit(conductor, buyer, channel_id, seller["id"], amount, key=key)
                    assert again.status_code == 201 and again.json == r.json
                    acknowledged[channel_id] += amount
                else:
                    assert r.status_code == 402, r.json

        return loop

    run_concurrently(money_client.app, [client(n) for n in range(64)])
    assert money_runtime.debit_batcher.batches < 64 * 6  # debits of concurrent clients shared commits
    for channel_id in channels:
        view = money_client.simulate_get(f"/v1/channels/{channel_id}", headers=buyer["headers"]).json
        assert view["spent_minor"] == acknowledged[channel_id] <= view["deposit_minor"]
    catch_up(money_runtime)
    rows = money_runtime.views.fetchall("SELECT * FROM ledger_balances")
    balances = {(r["account"], r["currency"]): int(r["balance_minor"]) for r in rows}
    ledger.check_balances(balances)
    for channel_id in channels:
        assert balances[(f"buyer:{buyer['id']}:channel:{channel_id}", "USD")] == 3_000 - acknowledged[channel_id]
