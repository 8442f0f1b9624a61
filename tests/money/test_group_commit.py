"""Group commit on PostgreSQL: batches saved through the asyncio connection, and two writers
of one channel (no routing) that lose version races re-run on fresh state instead of
spending the same balance twice."""

from __future__ import annotations

import uuid

import pytest
from falcon import testing

from api.app import create_app
from ops.adapters.postgres_async import AsyncPgSaver
from ops.bootstrap import build_runtime
from tests.helpers import run_concurrently
from tests.money.conftest import debit, open_card_channel, person
from tests.stubs import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET


@pytest.fixture
def two_writers(make_settings, stripe_stub):
    schema = f"t_{uuid.uuid4().hex[:12]}"
    runtimes = [build_runtime(make_settings("postgres", db_schema=schema, stripe_api_key=DEFAULT_API_KEY,
                                            stripe_webhook_secret=DEFAULT_WEBHOOK_SECRET,
                                            stripe_api_base=stripe_stub.url)) for _ in range(2)]
    yield runtimes, [testing.TestClient(create_app(runtime=rt)) for rt in runtimes]
    for rt in runtimes:
        rt.close()


def test_a_stale_writer_loses_the_race_and_reruns_on_fresh_state(two_writers, stripe_stub) -> None:
    (rt_a, _rt_b), (a, b) = two_writers
    assert isinstance(rt_a.debit_batcher.saver, AsyncPgSaver)
    buyer, seller = person(a, ["buyer"]), person(a, ["seller"])
    channel_id = open_card_channel(a, stripe_stub, buyer, 20)[0]
    assert debit(a, buyer, channel_id, seller["id"], 7).status_code == 201  # A caches the channel
    assert debit(b, buyer, channel_id, seller["id"], 7).status_code == 201  # B writes after it
    r = debit(a, buyer, channel_id, seller["id"], 7)  # A's copy is stale: its insert collides
    assert r.status_code == 402 and r.json["code"] == "channel_exhausted"  # decided on B's state
    assert rt_a.debit_batcher.conflicts == 1
    view = a.simulate_get(f"/v1/channels/{channel_id}", headers=buyer["headers"]).json
    assert view["spent_minor"] == 14


def test_writers_taking_turns_without_routing_spend_each_unit_once(two_writers, stripe_stub) -> None:
    (rt_a, _rt_b), (a, b) = two_writers
    buyer, seller = person(a, ["buyer"]), person(a, ["seller"])
    channel_id = open_card_channel(a, stripe_stub, buyer, 500)[0]
    statuses: list[int] = []

    def client(app, n: int):
        async def run(conductor) -> None:
            for i in range(5):
                r = await conductor.simulate_post(
                    f"/v1/channels/{channel_id}/debits", json={"amount_minor": 9, "seller_account_id": seller["id"]},
                    headers={**buyer["headers"], "Idempotency-Key": f"{n}-{i}"})
                statuses.append(r.status_code)
        return run

    # Concurrent clients of A, then of B, then of A again: A's cached copy is stale by then.
    run_concurrently(a.app, [client(a.app, n) for n in range(10)])
    run_concurrently(b.app, [client(b.app, 10 + n) for n in range(10)])
    run_concurrently(a.app, [client(a.app, 20 + n) for n in range(10)])
    assert set(statuses) <= {201, 402}
    view = a.simulate_get(f"/v1/channels/{channel_id}", headers=buyer["headers"]).json
    assert view["spent_minor"] == 9 * statuses.count(201) <= 500
    assert statuses.count(201) == 500 // 9  # every unit that could be spent was, once
    assert rt_a.debit_batcher.conflicts >= 1
