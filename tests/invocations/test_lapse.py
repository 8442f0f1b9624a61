"""The lapse sweep (freezegun): a session with no final report by exp + the report grace has
its whole hold released, once; a captured one is not touched; the channel may then settle."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from freezegun import freeze_time

from domain.model.errors import InvalidState
from tests.invocations.session import Market
from workers.invocations import sweep_invocations


def test_the_sweep_releases_holds_past_their_grace_and_only_them(mkt: Market) -> None:
    with freeze_time(datetime.now(UTC)) as frozen:
        idle = mkt.session(budget_minor=300)
        done = mkt.session(budget_minor=300)
        mkt.report_final(done, mkt.final_body(done, 4, countersigned_units=4))
        mkt.catch_up()
        lapse_at = idle.answer["token"]["lapse_at_s"]
        assert lapse_at == idle.claims.exp + 86400
        frozen.move_to(datetime.fromtimestamp(lapse_at - 1, UTC))
        assert sweep_invocations(mkt.runtime) == []
        frozen.move_to(datetime.fromtimestamp(lapse_at, UTC))
        assert sweep_invocations(mkt.runtime) == [idle.id]
        assert sweep_invocations(mkt.runtime) == []  # the read model lags; the invocation decides
        mkt.catch_up()
        assert sweep_invocations(mkt.runtime) == []
        money = mkt.market.money  # the sessions' logins expired a day ago: read through the application
        channel = money.channel(idle.buyer["channel_id"]).to_public()
        assert (channel["held_minor"], channel["spent_minor"], channel["remaining_minor"]) == (0, 0, 10_000)
        view = mkt.market.invocations.view(idle.buyer["id"], [], idle.id)
        assert (view["status"], view["released_minor"], view["captured_minor"]) == ("lapsed", 300, 0)
        assert money.channel(done.buyer["channel_id"]).spent_minor == 28
        closed = money.close_channel({}, idle.buyer["id"], idle.buyer["channel_id"])
        assert closed["status"] == "settled" and closed["refunded_minor"] == 10_000
        late = mkt.final_body(idle, 2, countersigned_units=2)
        with pytest.raises(InvalidState):  # the hold is gone
            mkt.report_final(idle, late)
