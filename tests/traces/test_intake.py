"""Trace intake with real signatures on both stores: recorded once, replays, skew, rotation
grace, chain gaps and forks, foreign envelopes, batches, effects saved with their trace, and
16 concurrent re-deliveries of one entry on PostgreSQL (one record)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from falcon import testing
from freezegun import freeze_time

from api.app import create_app
from domain.app.traces import Effect, PurchaseEffects, TraceService
from domain.model.base import Meta
from domain.model.errors import Conflict, MarketError
from domain.model.ids import NS_PLATFORM, natural_id
from domain.model.index import Index
from domain.model.keys import SigningKey
from domain.model.principal import Principal
from domain.model.traces import EFFECT_APPLIED, EFFECT_NONE, EFFECT_REFUSED
from tests.helpers import auth, device_jwt, rotation_body
from tests.traces.helpers import RECORDED, SIGNAL, SimNode, enrolled_node, events

T0 = "2027-01-15T08:00:00Z"
NS_TEST = natural_id(NS_PLATFORM, "tests/traces")


def marker(name: str, target: str = "") -> Index:
    """A small aggregate an effect saves with its trace (so the test sees whether it was saved)."""
    return Index(id=natural_id(NS_TEST, name), meta=Meta.system("test").as_dict(), kind="trace-test",
                 target_id=target)


@dataclass
class FakeEffects:
    """Effects under test control: an outcome per kind, aggregates to save with the trace."""

    outcomes: dict[str, Effect] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    make_aggregates: Any = None

    def __call__(self, meta: dict, device: Any, verified: Any) -> Effect:
        self.calls.append((verified.entry.kind, verified.entry.seq))
        effect = self.outcomes.get(verified.entry.kind, Effect(EFFECT_NONE))
        if self.make_aggregates is not None:
            return Effect(effect.outcome, effect.code, effect.detail, tuple(self.make_aggregates(verified)),
                          effect.signal, effect.subject)
        return effect


@dataclass
class Hub:
    runtime: Any
    client: testing.TestClient
    effects: FakeEffects
    service: TraceService

    def principal(self, node: SimNode, account_id: str = "") -> Principal:
        return Principal("device", account_id, ("seller",), device_id=node.device_id)

    def take(self, node: SimNode, *envelopes: dict, account_id: str = "") -> dict:
        return self.service.intake(Meta(f"device:{node.device_id}", "test").as_dict(), self.principal(node, account_id),
                                   list(envelopes))

    def refused(self, node: SimNode, *envelopes: dict) -> MarketError:
        with pytest.raises(MarketError) as caught:
            self.take(node, *envelopes)
        return caught.value

    def recorded(self) -> list[Any]:
        return events(self.runtime.market, RECORDED)

    def signals(self) -> list[Any]:
        return events(self.runtime.market, SIGNAL)


@pytest.fixture
def hub(runtime) -> Hub:
    effects = FakeEffects()
    return Hub(runtime, testing.TestClient(create_app(runtime=runtime)), effects, TraceService(runtime.market, effects))


def now_ms(hub: Hub) -> int:
    return hub.service.now_ms()


def test_an_entry_is_recorded_once_and_a_redelivery_is_a_duplicate(hub: Hub) -> None:
    node, _ = enrolled_node(hub.client)
    first = node.heartbeat()
    answer = hub.take(node, node.envelope(first))
    assert answer["results"] == [{"seq": 1, "entry_hash": first.entry_hash, "kind": "heartbeat", "status": "recorded",
                                  "effect": "none", "code": None}]
    again = hub.take(node, node.envelope(first))  # a new envelope (new nonce) of the same entry
    assert again["results"][0]["status"] == "duplicate"
    recorded = hub.recorded()
    assert len(recorded) == 1 and recorded[0].seq == 1 and recorded[0].device_id == node.device_id
    assert recorded[0].envelope["credentialSubject"]["entry"]["entry_hash"] == first.entry_hash
    assert hub.effects.calls == [("heartbeat", 1)] and hub.signals() == []
    assert hub.service.head(node.device_id) == (1, first.entry_hash)


def test_a_replayed_envelope_is_refused_and_signalled(hub: Hub) -> None:
    node, _ = enrolled_node(hub.client)
    envelope = node.envelope(node.heartbeat())
    hub.take(node, envelope)
    refused = hub.refused(node, envelope)
    assert (refused.code, refused.status) == ("trace_replayed", 401)
    [signal] = hub.signals()
    assert (signal.device_id, signal.code, signal.kind, signal.seq) == (node.device_id, "trace_replayed", "heartbeat", 1)
    assert len(hub.recorded()) == 1


def test_skew_applies_to_the_envelope_not_to_the_entry(hub: Hub) -> None:
    node, _ = enrolled_node(hub.client)
    with freeze_time(T0):
        now = now_ms(hub)
        hours_old = node.heartbeat(created_ms=now - 6 * 3600_000)  # written while the hub was away
        assert hub.take(node, node.envelope(hours_old, sent_ms=now - 29_000))["results"][0]["status"] == "recorded"
        late = node.heartbeat()
        for sent_ms in (now - 31_000, now + 31_000):
            assert hub.refused(node, node.envelope(late, sent_ms=sent_ms)).code == "trace_clock_skew"
        assert hub.take(node, node.envelope(late, sent_ms=now + 30_000))["results"][0]["seq"] == 2
    assert [s.code for s in hub.signals()] == ["trace_clock_skew", "trace_clock_skew"]


def test_a_rotated_key_verifies_within_its_grace_and_not_after(hub: Hub) -> None:
    node, device = enrolled_node(hub.client)
    old, new = node.key, SigningKey.generate()
    with freeze_time(T0) as frozen:
        body = rotation_body(old, new, node.device_id, device["kx"])
        r = hub.client.simulate_post(f"/v1/devices/{node.device_id}/keys", json=body,
                                     headers=auth(device_jwt(old, node.device_id, hub.service.now_s())))
        assert r.status_code == 201, r.json
        frozen.tick(23 * 3600 + 59 * 60)
        assert hub.take(node, node.envelope(node.heartbeat(), key=old))["results"][0]["status"] == "recorded"
        frozen.tick(2 * 60)  # 24 h 01 min after the rotation
        late = node.heartbeat()
        refused = hub.refused(node, node.envelope(late, key=old))
        assert (refused.code, refused.status) == ("key_expired", 401)
        assert hub.take(node, node.envelope(late, key=new))["results"][0]["seq"] == 2
    assert [s.code for s in hub.signals()] == ["key_expired"]


def test_a_gap_says_where_to_resume_and_a_fork_is_refused(hub: Hub) -> None:
    node, _ = enrolled_node(hub.client)
    entries = [node.heartbeat() for _ in range(5)]
    hub.take(node, *(node.envelope(e) for e in entries[:2]))
    gap = hub.refused(node, node.envelope(entries[4]))
    assert (gap.code, gap.status, gap.extra["expected_seq"], gap.extra["head_hash"]) == (
        "trace_chain_gap", 409, 3, entries[1].entry_hash)
    other = SimNode(node.device_id, node.key, entries=list(node.entries[:1]))
    forked = other.heartbeat(created_ms=1)  # another entry 2
    fork = hub.refused(node, node.envelope(forked))
    assert (fork.code, fork.status) == ("trace_chain_fork", 409)
    fresh = SimNode(node.device_id, node.key)
    fresh.heartbeat(created_ms=2)  # an outbox started again from seq 1: not the recorded entry 1
    assert hub.refused(node, node.envelope(fresh.entries[0])).code == "trace_chain_fork"
    after_fork = other.heartbeat(created_ms=3)  # entry 3 chained from the other entry 2
    assert hub.refused(node, node.envelope(after_fork)).code == "trace_chain_fork"
    assert [s.code for s in hub.signals()] == ["trace_chain_gap"] + ["trace_chain_fork"] * 3
    hub.take(node, *(node.envelope(e) for e in entries[2:]))  # resumed from 3: in order again
    assert [t.seq for t in hub.recorded()] == [1, 2, 3, 4, 5]


def test_envelopes_for_another_device_or_hub_or_by_a_foreign_key_are_refused(hub: Hub) -> None:
    node, device = enrolled_node(hub.client)
    neighbour, _ = enrolled_node(hub.client, device["seller"])
    entry = node.heartbeat()
    assert hub.refused(neighbour, node.envelope(entry)).code == "foreign_device"  # sent by another device
    assert hub.refused(node, node.envelope(entry, key=neighbour.key)).code == "device_not_enrolled"
    assert hub.refused(node, node.envelope(entry, audience="http://other-hub.test")).code == "trace_wrong_audience"
    tampered = node.envelope(entry)
    tampered["credentialSubject"]["entry"]["body"]["uptime_s"] += 1
    assert hub.refused(node, tampered).code == "trace_signature_invalid"
    assert hub.refused(node, {"hello": "world"}).code == "trace_envelope_invalid"
    codes = {(s.device_id, s.code, s.kind) for s in hub.signals()}
    assert codes == {(neighbour.device_id, "foreign_device", "heartbeat"),
                     (node.device_id, "device_not_enrolled", "heartbeat"),
                     (node.device_id, "trace_wrong_audience", "heartbeat"),
                     (node.device_id, "trace_signature_invalid", "heartbeat"),
                     (node.device_id, "trace_envelope_invalid", "envelope")}
    assert hub.recorded() == []


def test_a_batch_stops_at_the_first_refused_envelope(hub: Hub) -> None:
    node, _ = enrolled_node(hub.client)
    entries = [node.heartbeat() for _ in range(4)]
    envelopes = [node.envelope(e) for e in entries]
    envelopes[2] = node.envelope(entries[2], sent_ms=now_ms(hub) - 60_000)
    refused = hub.refused(node, *envelopes)
    assert (refused.code, refused.extra["index"]) == ("trace_clock_skew", 2)
    assert [r["seq"] for r in refused.extra["results"]] == [1, 2]
    assert [t.seq for t in hub.recorded()] == [1, 2]
    answer = hub.take(node, *(node.envelope(e) for e in entries))
    assert [r["status"] for r in answer["results"]] == ["duplicate", "duplicate", "recorded", "recorded"]


def test_effects_are_saved_with_their_trace_and_refusals_are_signals(hub: Hub) -> None:
    node, _ = enrolled_node(hub.client)
    hub.effects.outcomes = {"redemption": Effect(EFFECT_APPLIED),
                            "receipt": Effect(EFFECT_REFUSED, code="receipt_invalid", detail="no", signal=True,
                                              subject={"purchase_id": "p1"})}
    hub.effects.make_aggregates = lambda v: [marker(f"applied-{v.entry.seq}")] if v.entry.kind == "redemption" else []
    redemption = node.append("redemption", {"jti": "j" * 16, "purchase_id": "p1",
                                            "listing_id": "0b7e6f0e-1d2c-5b3a-9f8e-7d6c5b4a3f2e",
                                            "device_id": node.device_id, "jkt": "k" * 43, "bound_at_ms": 5})
    answer = hub.take(node, node.envelope(redemption))
    assert answer["results"][0]["effect"] == "applied"
    assert hub.runtime.market.exists(natural_id(NS_TEST, "applied-1"))  # saved with the trace
    receipt = node.append("receipt", _credential("DeliveryReceipt"))
    assert hub.take(node, node.envelope(receipt))["results"][0] == {
        "seq": 2, "entry_hash": receipt.entry_hash, "kind": "receipt", "status": "recorded", "effect": "refused",
        "code": "receipt_invalid"}
    refusal = node.append("refusal", {"jti": "j" * 16, "purchase_id": "p1", "jkt": "m" * 43,
                                      "code": "delivery_token_bound", "at_ms": 7})
    hub.service.effects = PurchaseEffects(hub.runtime.market)  # the real rule for reported refusals
    assert hub.take(node, node.envelope(refusal))["results"][0]["effect"] == "none"
    signals = {s.seq: s for s in hub.signals()}
    assert (signals[2].code, signals[2].subject) == ("receipt_invalid", {"purchase_id": "p1"})
    assert (signals[3].code, signals[3].kind, signals[3].subject) == (
        "delivery_token_bound", "refusal", {"purchase_id": "p1", "jti": "j" * 16, "jkt": "m" * 43})
    assert [t.effect for t in hub.recorded()] == ["applied", "refused", "none"]


def test_a_failing_save_records_neither_the_trace_nor_its_effect(hub: Hub) -> None:
    node, _ = enrolled_node(hub.client)
    hub.runtime.market.save(marker("taken"))
    hub.effects.make_aggregates = lambda v: [marker("taken")]  # version 1 again: the save always loses
    refused = hub.refused(node, node.envelope(node.heartbeat()))
    assert type(refused) is Conflict and refused.status == 409
    assert hub.recorded() == [] and hub.signals() == []  # our race, not the node's doing: no signal


@pytest.mark.parametrize("store", ["postgres"])
def test_sixteen_concurrent_redeliveries_record_one_entry(hub: Hub) -> None:
    node, _ = enrolled_node(hub.client)
    entry = node.heartbeat()
    envelopes = [node.envelope(entry) for _ in range(16)]  # each re-delivery is a new envelope
    barrier, answers, errors = threading.Barrier(16), [], []

    def deliver(envelope: dict) -> None:
        barrier.wait()
        try:
            answers.append(hub.take(node, envelope)["results"][0]["status"])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(e,)) for e in envelopes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(answers) == ["duplicate"] * 15 + ["recorded"]
    assert len(hub.recorded()) == 1 and len(hub.effects.calls) >= 1


def _credential(vc_type: str) -> dict:
    return {"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiableCredential", vc_type],
            "issuer": "did:key:z6Mk", "validFrom": "2027-01-15T08:00:00Z", "credentialSubject": {"purchase_id": "p1"},
            "proof": {"type": "DataIntegrityProof"}}
