"""``POST /v1/traces`` through the HTTP app: a device token and its own envelopes, results per
envelope, problems with distinct codes (and where a batch stopped), other credentials refused."""

from __future__ import annotations

import time

from tests.helpers import auth, device_jwt, login
from tests.traces.helpers import RECORDED, SIGNAL, enrolled_node, events


def post(client, node, envelopes, token: str | None = None):
    token = token or device_jwt(node.key, node.device_id, int(time.time()))
    return client.simulate_post("/v1/traces", json={"envelopes": envelopes}, headers=auth(token))


def test_a_node_reports_a_batch_and_a_redelivery_is_a_duplicate(client, runtime) -> None:
    node, _ = enrolled_node(client)
    entries = [node.heartbeat() for _ in range(3)]
    r = post(client, node, [node.envelope(e) for e in entries])
    assert r.status_code == 200, r.json
    assert [(x["seq"], x["status"], x["effect"]) for x in r.json["results"]] == [
        (1, "recorded", "none"), (2, "recorded", "none"), (3, "recorded", "none")]
    again = post(client, node, [node.envelope(entries[2])])
    assert again.status_code == 200 and again.json["results"][0]["status"] == "duplicate"
    assert len(events(runtime.market, RECORDED)) == 3


def test_refusals_are_problems_with_their_code_and_where_the_batch_stopped(client, runtime) -> None:
    node, _ = enrolled_node(client)
    entries = [node.heartbeat() for _ in range(4)]
    r = post(client, node, [node.envelope(entries[0]), node.envelope(entries[2])])
    assert (r.status_code, r.headers["content-type"], r.json["code"]) == (
        409, "application/problem+json", "trace_chain_gap")
    assert (r.json["index"], r.json["expected_seq"], r.json["head_hash"]) == (1, 2, entries[0].entry_hash)
    assert [x["seq"] for x in r.json["results"]] == [1]
    stale = post(client, node, [node.envelope(entries[1], sent_ms=int(time.time() * 1000) - 120_000)])
    assert (stale.status_code, stale.json["code"], stale.json["index"]) == (422, "trace_clock_skew", 0)
    envelope = node.envelope(entries[1])
    assert post(client, node, [envelope]).status_code == 200
    replay = post(client, node, [envelope])
    assert (replay.status_code, replay.json["code"]) == (401, "trace_replayed")
    assert [s.code for s in events(runtime.market, SIGNAL)] == ["trace_chain_gap", "trace_clock_skew",
                                                                "trace_replayed"]


def test_only_a_device_posts_traces_and_only_its_own(client, runtime) -> None:
    node, device = enrolled_node(client)
    entry = node.heartbeat()
    session = login(client, device["seller"]["email"])
    r = client.simulate_post("/v1/traces", json={"envelopes": [node.envelope(entry)]}, headers=auth(session))
    assert (r.status_code, r.json["code"]) == (403, "forbidden")
    r = client.simulate_post("/v1/traces", json={"envelopes": [node.envelope(entry)]})
    assert r.status_code == 401
    other, _ = enrolled_node(client)
    r = post(client, other, [node.envelope(entry)])
    assert (r.status_code, r.json["code"]) == (403, "foreign_device")
    for body in ({"envelopes": []}, {"envelopes": [{}] * 33}, {"envelopes": "x"}, {}):
        r = client.simulate_post("/v1/traces", json=body, headers=auth(device_jwt(node.key, node.device_id,
                                                                                  int(time.time()))))
        assert (r.status_code, r.json["code"]) == (422, "invalid_input"), body
    assert events(runtime.market, RECORDED) == []
    assert [s.code for s in events(runtime.market, SIGNAL)] == ["foreign_device"]  # schema refusals: no trace read
