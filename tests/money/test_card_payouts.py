"""Card path end to end: PaymentIntent through the real stripe library to the loopback stub,
signed webhook funds the channel, debits, close, then a payout by Stripe Connect transfer
keyed by our payout id (retried after a transient failure, never paid twice), statements."""

from __future__ import annotations

import pytest

from domain.model.errors import PaymentProviderUnavailable
from tests.money.conftest import catch_up, open_card_channel, person
from workers.payouts import send_payout, sweep_payouts


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_card_channel_to_payout(money_client, money_runtime, stripe_stub) -> None:
    buyer, seller = person(money_client, ["buyer"]), person(money_client, ["seller"])
    r = money_client.simulate_post("/v1/me/payout-destination", json={"stripe_account": "acct_seller1"},
                                   headers=seller["headers"])
    assert r.status_code == 201, r.json
    channel_id, _ = open_card_channel(money_client, stripe_stub, buyer, 5_000)
    assert stripe_stub.requests_to("POST", "/v1/payment_intents")[0].idempotency_key == f"{channel_id}:open"
    for i, amount in enumerate((1_000, 2_001)):
        d = money_client.simulate_post(f"/v1/channels/{channel_id}/debits",
                                       json={"amount_minor": amount, "seller_account_id": seller["id"]},
                                       headers={**buyer["headers"], "Idempotency-Key": f"d{i}"})
        assert d.status_code == 201, d.json
    money_client.simulate_post(f"/v1/channels/{channel_id}/close", headers=buyer["headers"])
    catch_up(money_runtime)

    stripe_stub.fail_next(3, status=500)  # the library retries twice, then the actor must retry
    queued: list[tuple[str, str, str]] = []
    created = sweep_payouts(money_runtime, lambda *a: queued.append(a))
    assert len(created) == 1 and sweep_payouts(money_runtime, lambda *a: queued.append(a)) == []
    with pytest.raises(PaymentProviderUnavailable):
        send_payout(money_runtime, *queued[0])  # Dramatiq would retry this with backoff
    assert send_payout(money_runtime, *queued[0]) == "sent"
    assert send_payout(money_runtime, *queued[0]) == "sent"  # a redelivered message does nothing
    transfers = [t for t in stripe_stub.requests_to("POST", "/v1/transfers") if t.status < 300]
    assert len(transfers) == 1 and transfers[0].idempotency_key == created[0]
    assert transfers[0].params["amount"] == str(950 + 1_901)

    catch_up(money_runtime)
    statement = money_client.simulate_get("/v1/statements", headers=seller["headers"]).json
    assert statement["totals"] == [{"currency": "USD", "gross_minor": 3_001, "fee_minor": 150, "net_minor": 2_851}]
    assert [(p["status"], p["amount_minor"]) for p in statement["payouts"]] == [("sent", 2_851)]
    assert statement["payable"] == [{"currency": "USD", "balance_minor": 0}]
