"""Traces change their purchase (helper A's Purchase, saved with the trace in one save): the
seller's redemption and receipt and the buyer's forwarded confirmation make it delivered; a
receipt reported by another device, a redemption by another key and a reported refusal are
behaviour signals; nothing is applied twice."""

from __future__ import annotations

import pytest
from falcon import testing

from api.app import create_app
from domain.app.traces import TraceService
from domain.model.base import Meta
from domain.model.principal import Principal
from tests.purchases.model_helpers import Sale
from tests.traces.helpers import SIGNAL, SimNode, enrolled_node, events


@pytest.fixture
def world(runtime):
    client = testing.TestClient(create_app(runtime=runtime))
    seller, _device = enrolled_node(client)
    buyer, _ = enrolled_node(client)
    sale = Sale(device_key=seller.key, device_id=seller.device_id)
    runtime.market.save(sale.purchase())
    return runtime, TraceService(runtime.market), seller, buyer, sale


def take(service: TraceService, node: SimNode, entry) -> dict:
    principal = Principal("device", "", ("seller",), device_id=node.device_id)
    return service.intake(Meta(f"device:{node.device_id}", "t").as_dict(), principal,
                          [node.envelope(entry)])["results"][0]


def redemption(sale: Sale, device_id: str, jkt: str | None = None) -> dict:
    return {"jti": sale.jti, "purchase_id": str(sale.purchase_id), "listing_id": sale.listing_id,
            "device_id": device_id, "jkt": jkt or sale.jkt, "bound_at_ms": 1_760_000_000_100}


def test_redemption_confirmation_and_receipt_make_the_purchase_delivered(world) -> None:
    runtime, service, seller, buyer, sale = world
    assert take(service, seller, seller.append("redemption", redemption(sale, seller.device_id)))["effect"] == "applied"
    confirmation = sale.confirmation()
    assert take(service, buyer, buyer.append("confirmation", confirmation))["effect"] == "applied"  # the buyer's node
    assert take(service, seller, seller.append("confirmation", confirmation))["effect"] == "applied"  # and the seller's
    receipt = sale.receipt(confirmation=confirmation)
    assert take(service, seller, seller.append("receipt", receipt)) == {
        "seq": 3, "entry_hash": seller.entries[-1].entry_hash, "kind": "receipt", "status": "recorded",
        "effect": "applied", "code": None}
    purchase = runtime.market.purchases.purchase(str(sale.purchase_id))
    assert purchase.redemption["buyer_jkt"] == sale.jkt and purchase.delivered is not None
    assert purchase.status == "delivered"
    version = purchase.version
    assert take(service, seller, seller.entries[-1])["status"] == "duplicate"  # re-delivered: applied once
    assert runtime.market.purchases.purchase(str(sale.purchase_id)).version == version
    assert events(runtime.market, SIGNAL) == []


def test_foreign_receipts_other_keys_and_reported_refusals_are_signals(world) -> None:
    runtime, service, seller, buyer, sale = world
    wrong_key = take(service, seller, seller.append("redemption", redemption(sale, seller.device_id, "Z" * 43)))
    assert (wrong_key["effect"], wrong_key["code"]) == ("refused", "redemption_key_mismatch")
    foreign = take(service, buyer, buyer.append("receipt", sale.receipt()))  # not the seller's device
    assert (foreign["effect"], foreign["code"]) == ("refused", "foreign_device")
    unknown = dict(redemption(sale, seller.device_id), purchase_id="00000000-0000-4000-8000-000000000000")
    assert take(service, seller, seller.append("redemption", unknown))["code"] == "purchase_not_found"
    refusal = {"jti": sale.jti, "purchase_id": str(sale.purchase_id), "jkt": "Y" * 43,
               "code": "delivery_token_bound", "at_ms": 1}
    assert take(service, seller, seller.append("refusal", refusal))["effect"] == "none"
    signals = [(s.device_id, s.kind, s.code) for s in events(runtime.market, SIGNAL)]
    assert signals == [(seller.device_id, "redemption", "redemption_key_mismatch"),
                       (buyer.device_id, "receipt", "foreign_device"),
                       (seller.device_id, "redemption", "purchase_not_found"),
                       (seller.device_id, "refusal", "delivery_token_bound")]
    assert runtime.market.purchases.purchase(str(sale.purchase_id)).redemption is None
