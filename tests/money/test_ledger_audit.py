"""``aimarket audit verify`` rebuilds the ledger from the log alone: channels replayed with
their invariants, postings balanced, the whole ledger checked, and the balances read model
compared with the log up to the position it has reached."""

from __future__ import annotations

import pytest

from domain.model.base import Meta
from domain.model.channel import Channel
from ops.audit import verify_log
from tests.money.conftest import catch_up, debit, open_card_channel, person
from workers.payouts import send_payout, sweep_payouts


def card_flow(client, runtime, stub) -> tuple[dict, str]:
    """5,000 in by card, 3,001 spent (150 fee), closed (1,999 refunded), 2,851 paid out."""
    buyer, seller = person(client, ["buyer"]), person(client, ["seller"])
    client.simulate_post("/v1/me/payout-destination", json={"stripe_account": "acct_s1"}, headers=seller["headers"])
    channel_id, _ = open_card_channel(client, stub, buyer, 5_000)
    for amount in (1_000, 2_001):
        assert debit(client, buyer, channel_id, seller["id"], amount).status_code == 201
    client.simulate_post(f"/v1/channels/{channel_id}/close", headers=buyer["headers"])
    catch_up(runtime)
    queued: list[tuple] = []
    sweep_payouts(runtime, lambda *a: queued.append(a))
    assert send_payout(runtime, *queued[0]) == "sent"
    return buyer, channel_id


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_the_log_proves_the_ledger_and_the_read_model(money_client, money_runtime, stripe_stub) -> None:
    market, views = money_runtime.market, money_runtime.views
    _, channel_id = card_flow(money_client, money_runtime, stripe_stub)
    lagging = verify_log(market, views)  # the payout is not projected yet: compared up to its position
    assert lagging["ok"], lagging["problems"]
    catch_up(money_runtime)
    report = verify_log(market, views)
    assert report["ok"], report["problems"]
    assert report["ledger"]["held_minor"] == {"USD": 150}  # 5,000 in; 2,851 paid out and 1,999 refunded
    assert report["ledger"]["channels"] == 1 and report["ledger"]["money_events"] >= 8
    assert report["ledger"]["read_model_position"] > lagging["ledger"]["read_model_position"]

    # A read model edited by hand no longer matches the log.
    with views.transaction() as tx:
        tx.execute("UPDATE ledger_balances SET balance_minor = balance_minor + 1 WHERE account = 'platform:fees'")
    edited = verify_log(market, views)
    assert not edited["ok"]
    assert edited["problems"] == ["read model: ledger_balances platform:fees USD is 151, the log says 150"]
    with views.transaction() as tx:
        tx.execute("UPDATE ledger_balances SET balance_minor = balance_minor - 1 WHERE account = 'platform:fees'")
        tx.execute("UPDATE money_channels SET card_refund_pending_minor = 0")  # the sweep would skip its refund
    edited = verify_log(market, views)
    assert edited["problems"] == [
        f"read model: card_refund_pending_minor of channel {channel_id} is 0, the log says 1999"]

    # An event that went around the aggregate's rules (an overdraft) is caught on replay.
    channel = market.money.channel(channel_id)
    channel.trigger_event(Channel.Debited, meta=Meta.system("forged", "forged").as_dict(), amount_minor=10**6,
                          fee_minor=0, seller_account_id="x", purpose="", idempotency_key="forged",
                          request_hash="forged")
    market.save(channel)
    forged = verify_log(market)
    assert not forged["ok"]
    assert any(f"channel {channel_id}" in p and "spent" in p for p in forged["problems"]), forged["problems"]
