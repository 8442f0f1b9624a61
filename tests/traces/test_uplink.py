"""The node's uplink against the hub's app (in process, no sockets): the outbox delivered in
signed batches, kept while the hub is away and delivered once when it returns, parked on a
permanent refusal, resumed after a hub that lost entries, hub keys refreshed, heartbeats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from falcon import testing

from api.app import create_app
from domain.model.base import Meta
from domain.model.device import Device
from domain.model.ids import parse_uuid
from domain.model.keys import SigningKey
from node.delivery.uplink import HUB_KEY_MEMORY_MS, HubKeys, Uplink, UplinkThread
from node.hub_client import HubClient, HubError
from node.outbox import Outbox
from tests.helpers import wait_until
from tests.traces.helpers import RECORDED, enrolled_node, events, now_ms


class InProcessHub(HubClient):
    """``HubClient`` answered by the hub's app through Falcon's test client; ``up`` switches it."""

    def __init__(self, client: testing.TestClient) -> None:
        super().__init__("http://hub.test")
        self.client, self.up, self.posts = client, True, 0

    def request(self, method: str, path: str, body: Any = None, *, bearer: str | None = None,
                headers: dict[str, str] | None = None) -> Any:
        if not self.up:
            raise HubError(0, "hub_unreachable", "connection refused")
        self.posts += method == "POST"
        r = self.client.simulate_request(method, path, json=body,
                                         headers={**(headers or {}), **({"Authorization": f"Bearer {bearer}"}
                                                                         if bearer else {})})
        if r.status_code >= 400:
            raise HubError(r.status_code, r.json.get("code", "http_error"), r.json.get("detail", ""), r.json)
        return r.json


@pytest.fixture
def setup(runtime, tmp_path: Path):
    client = testing.TestClient(create_app(runtime=runtime))
    node, _device = enrolled_node(client)
    hub = InProcessHub(client)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    yield runtime, hub, Uplink(hub, device_id=node.device_id, key=node.key), outbox, node
    outbox.close()


def recorded(runtime) -> list[int]:
    return [e.seq for e in events(runtime.market, RECORDED)]


def test_entries_wait_while_the_hub_is_away_and_are_recorded_once_when_it_returns(setup) -> None:
    runtime, hub, uplink, outbox, _ = setup
    hub.up = False
    for n in range(20):
        outbox.append("heartbeat", {"started_ms": 0, "uptime_s": n, "outbox_pending": n}, now_ms())
    t = now_ms()
    assert outbox.deliver_batches(uplink.send, t) == 0
    assert outbox.status()["pending"] == 20 and outbox.status()["parked"] is None
    assert outbox.deliver_batches(uplink.send, t + 100) == 0  # backing off: not even tried
    hub.up = True
    assert outbox.deliver_batches(uplink.send, t + 60_000, batch_size=16) == 20
    assert hub.posts == 2 and outbox.pending() == []  # two batches: 16 + 4
    assert recorded(runtime) == list(range(1, 21))
    outbox.deliver_batches(uplink.send, t + 120_000)
    assert recorded(runtime) == list(range(1, 21))


def test_an_answer_lost_on_the_way_back_is_a_duplicate_the_next_time(setup) -> None:
    runtime, hub, uplink, outbox, _ = setup
    outbox.append("heartbeat", {"started_ms": 0, "uptime_s": 1, "outbox_pending": 0}, now_ms())
    real = hub.request

    def lose_answer(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise HubError(0, "hub_unreachable", "reset after the hub answered")

    hub.request = lose_answer  # type: ignore[method-assign]
    assert outbox.deliver_batches(uplink.send, now_ms()) == 0
    hub.request = real  # type: ignore[method-assign]
    assert outbox.deliver_batches(uplink.send, now_ms() + 60_000) == 1
    assert recorded(runtime) == [1]


def test_a_permanent_refusal_parks_the_outbox(setup) -> None:
    runtime, hub, uplink, outbox, node = setup
    for n in range(3):
        outbox.append("heartbeat", {"started_ms": 0, "uptime_s": n, "outbox_pending": 0}, now_ms())
    assert outbox.deliver_batches(uplink.send, now_ms()) == 3
    market = runtime.market
    device = market.load(Device, parse_uuid(node.device_id))
    device.suspend(Meta.system("test").as_dict(), reason="test")
    market.save(device)
    outbox.append("heartbeat", {"started_ms": 0, "uptime_s": 9, "outbox_pending": 0}, now_ms())
    posts = hub.posts
    assert outbox.deliver_batches(uplink.send, now_ms()) == 0
    assert outbox.status()["parked"]["code"] == "device_suspended"
    for later in (10**6, 10**9):
        assert outbox.deliver_batches(uplink.send, now_ms() + later) == 0
    assert hub.posts == posts + 1  # tried once, then parked


def test_a_hub_that_lost_entries_gets_them_again(setup) -> None:
    runtime, _hub, uplink, outbox, _ = setup
    for n in range(4):
        outbox.append("heartbeat", {"started_ms": 0, "uptime_s": n, "outbox_pending": 0}, now_ms())
    outbox.deliver_batches(uplink.send, now_ms(), batch_size=2, limit=2)  # the hub has 1, 2
    outbox.deliver(lambda entry: None, now_ms())  # 3, 4 "delivered" to a hub whose backup lost them
    outbox.append("heartbeat", {"started_ms": 0, "uptime_s": 5, "outbox_pending": 0}, now_ms())
    assert outbox.deliver_batches(uplink.send, now_ms()) == 3  # gap at 5: resumed from 3
    assert recorded(runtime) == [1, 2, 3, 4, 5]


def test_hub_keys_come_from_discovery_and_a_rotated_key_is_kept_25_hours(setup, tmp_path: Path) -> None:
    _, _hub, uplink, _, _ = setup
    pinned = SigningKey.generate().verify_key
    keys = HubKeys({"pinned": pinned}, cache=tmp_path / "hub_keys.json")
    document = uplink.discover()
    keys.learn(document, 1_000)
    kid = document["signing_key"]["kid"]
    assert set(keys.trusted(1_000)) == {"pinned", kid}
    rotated = {**document, "signing_key": {**document["signing_key"], "kid": "next",
                                           "public_key": SigningKey.generate().verify_key.to_multibase()}}
    keys.learn(rotated, 2_000)
    assert set(keys.trusted(2_000)) == {"pinned", kid, "next"}
    assert set(keys.trusted(1_000 + HUB_KEY_MEMORY_MS + 1)) == {"pinned", "next"}
    assert set(HubKeys({}, cache=tmp_path / "hub_keys.json").trusted(2_000)) == {kid, "next"}  # cached


def test_the_uplink_thread_beats_refreshes_keys_and_delivers(setup, tmp_path: Path) -> None:
    runtime, _hub, uplink, outbox, _ = setup
    seen: list[set[str]] = []
    thread = UplinkThread(outbox.path, uplink, hub_keys=HubKeys({}), on_keys=lambda keys: seen.append(set(keys)),
                          heartbeat_s=0.05, refresh_s=0.05, pump_s=0.02)
    thread.start()
    try:
        wait_until(lambda: len(recorded(runtime)) >= 3 and len(seen) >= 2, 20, what="three heartbeats recorded")
    finally:
        thread.stop()
    assert not thread.is_alive() and thread.failure is None
    kinds = [e.kind for e in outbox.entries()]
    assert set(kinds) == {"heartbeat"} and recorded(runtime) == list(range(1, len(recorded(runtime)) + 1))
    assert seen[0] == {runtime.market.keyring().current("signing")}
