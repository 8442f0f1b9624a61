"""The compute kinds through trace intake, against a stand-in for ``market.invocations`` (the
routing, what is saved with the trace, what becomes a signal). The real service is exercised
through intake in ``tests/traces/test_invoke_intake_hub.py`` and end to end in
``tests/e2e/test_compute_end_to_end.py``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from falcon import testing

from api.app import create_app
from domain.app.traces import TraceService
from domain.model.base import Meta
from domain.model.errors import InvokeReceiptReplayed, InvokeReceiptTampered, InvokeUnitPriceChanged
from domain.model.principal import Principal
from domain.model.traces import Signal
from tests.traces.helpers import RECORDED, SIGNAL, SimNode, enrolled_node, events

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "trace_envelope_invoke.json").read_text())
BODIES = {v["entry"]["kind"]: v["entry"]["body"] for v in VECTORS["positive"]}


class FakeInvocations:
    """Answers what it is told to; records what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.raises: Exception | None = None
        self.returns: tuple[Any, ...] | None = None

    def _apply(self, name: str, meta: dict[str, Any], device: Any, body: dict[str, Any]) -> tuple[Any, ...]:
        self.calls.append((name, str(device.id), body))
        if self.raises is not None:
            raise self.raises
        if self.returns is not None:
            return self.returns
        return (Signal.make(uuid.uuid4(), meta, device_id=str(device.id), kind="marker", code=name, at_ms=1),)

    def apply_bound(self, meta: dict[str, Any], device: Any, body: dict[str, Any]) -> tuple[Any, ...]:
        return self._apply("bound", meta, device, body)

    def apply_final(self, meta: dict[str, Any], device: Any, body: dict[str, Any]) -> tuple[Any, ...]:
        return self._apply("final", meta, device, body)

    def apply_rejection(self, meta: dict[str, Any], device: Any, body: dict[str, Any]) -> tuple[Any, ...]:
        return self._apply("rejection", meta, device, body)


@pytest.fixture
def world(runtime, monkeypatch):
    client = testing.TestClient(create_app(runtime=runtime))
    seller, _ = enrolled_node(client)
    fake = FakeInvocations()
    monkeypatch.setattr(runtime.market, "invocations", fake, raising=False)
    return runtime, TraceService(runtime.market), seller, fake


def take(service: TraceService, node: SimNode, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    principal = Principal("device", "", ("seller",), device_id=node.device_id)
    entry = node.append(kind, body)
    return service.intake(Meta(f"device:{node.device_id}", "t").as_dict(), principal,
                          [node.envelope(entry)])["results"][0]


def test_each_compute_kind_goes_to_its_apply_and_its_aggregates_are_saved_with_the_trace(world) -> None:
    runtime, service, seller, fake = world
    for kind in ("invoke_bound", "invoke_final"):
        assert take(service, seller, kind, BODIES[kind])["effect"] == "applied"
    assert [(name, device) for name, device, _ in fake.calls] == [("bound", seller.device_id),
                                                                   ("final", seller.device_id)]
    assert fake.calls[1][2] == BODIES["invoke_final"]
    saved = [(s.kind, s.code) for s in events(runtime.market, SIGNAL)]
    assert saved == [("marker", "bound"), ("marker", "final")]  # what apply_* returned, in the trace's save
    assert [t.kind for t in events(runtime.market, RECORDED)] == ["invoke_bound", "invoke_final"]


def test_a_final_report_already_captured_changes_nothing(world) -> None:
    runtime, service, seller, fake = world
    fake.returns = ()
    result = take(service, seller, "invoke_final", BODIES["invoke_final"])
    assert (result["status"], result["effect"], result["code"]) == ("recorded", "none", None)
    assert events(runtime.market, SIGNAL) == []


def test_a_verified_rejection_is_applied_and_a_signal_about_the_buyer_key(world) -> None:
    runtime, service, seller, fake = world
    fake.returns = ()
    result = take(service, seller, "invoke_rejection", BODIES["invoke_rejection"])
    rejection = BODIES["invoke_rejection"]["rejection"]["credentialSubject"]
    assert (result["effect"], result["code"]) == ("applied", rejection["code"])
    [signal] = events(runtime.market, SIGNAL)
    assert (signal.device_id, signal.kind, signal.code) == (seller.device_id, "invoke_rejection", rejection["code"])
    assert signal.subject == {"invocation_id": rejection["invocation_id"], "jti": rejection["jti"],
                              "buyer_jkt": rejection["buyer_jkt"]}


@pytest.mark.parametrize("error", [InvokeReceiptTampered("x"), InvokeUnitPriceChanged("y"), InvokeReceiptReplayed("z")],
                         ids=lambda e: e.code)
def test_a_refused_final_report_is_recorded_refused_with_its_code_and_signalled(world, error) -> None:
    runtime, service, seller, fake = world
    fake.raises = error
    result = take(service, seller, "invoke_final", BODIES["invoke_final"])
    assert (result["status"], result["effect"], result["code"]) == ("recorded", "refused", error.code)
    [signal] = events(runtime.market, SIGNAL)
    assert (signal.kind, signal.code) == ("invoke_final", error.code)
    assert signal.subject["invocation_id"] == BODIES["invoke_final"]["invocation_id"]
    fake.raises = None  # the chain goes on after a refused entry
    assert take(service, seller, "invoke_bound", BODIES["invoke_bound"])["effect"] == "applied"


def test_three_refusals_have_three_distinct_codes() -> None:
    codes = {InvokeReceiptTampered.code, InvokeUnitPriceChanged.code, InvokeReceiptReplayed.code}
    assert codes == {"invoke_receipt_tampered", "invoke_unit_price_changed", "invoke_receipt_replayed"}
