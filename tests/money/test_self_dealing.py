"""An account with both roles cannot debit its own channel to pay itself: refused on the
batched path (the API's debit route, the group-commit batcher) and on the one-transaction
path (``MoneyService.debit``), with nothing recorded either way."""

from __future__ import annotations

import uuid

import pytest

from domain.model.base import Meta
from domain.model.errors import SelfDealing
from tests.money.conftest import debit, open_card_channel, person


def test_a_buyer_cannot_pay_itself_on_either_debit_path(money_runtime, money_client, stripe_stub) -> None:
    both = person(money_client, ["buyer", "seller"])
    other = person(money_client, ["seller"])
    channel_id = open_card_channel(money_client, stripe_stub, both, 1_000)[0]

    batched = debit(money_client, both, channel_id, both["id"], 100)  # the API: group commit
    assert batched.status_code == 403 and batched.json["code"] == "self_dealing", batched.json
    assert batched.json["param"] == "seller_account_id"

    meta = Meta(f"account:{both['id']}", "test").as_dict()
    with pytest.raises(SelfDealing):  # one transaction per debit
        money_runtime.market.money.debit(meta, both["id"], channel_id, idempotency_key=uuid.uuid4().hex,
                                         body={"amount_minor": 100, "seller_account_id": both["id"].upper()})

    assert debit(money_client, both, channel_id, other["id"], 100).status_code == 201  # another seller: fine
    view = money_runtime.market.money.channel(channel_id).to_public()
    assert (view["spent_minor"], view["debits"]) == (100, 1)
