"""A log that carries every kind of signature ``audit verify`` checks: a device enrolled and its
key rotated (through the API), a listing published and updated with the node's credential
(recorded with its proof value), a purchase with the hub-signed delivery token, and the
seller's and buyer's traces (a redemption, the buyer's confirmation, the seller's receipt)
taken by the trace service, so the purchase is delivered."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from falcon import testing

from api.app import create_app
from domain.app.catalogue import credential_digest
from domain.app.traces import TraceService
from domain.model.base import Meta
from domain.model.keys import SigningKey
from domain.model.listing import Listing, listing_id_for
from domain.model.principal import Principal
from node.publishing import publish_credential, update_credential
from tests.catalogue.helpers import listing
from tests.helpers import auth, device_jwt, rotation_body
from tests.purchases.model_helpers import Sale
from tests.traces.helpers import SimNode, enrolled_node

META = {"actor": "device:test", "correlation_id": "req-s", "causation_id": ""}
OFFER = listing("Patient admissions 2025")


@dataclass
class SignedWorld:
    runtime: Any
    seller: SimNode
    buyer: SimNode
    sale: Sale
    listing_id: uuid.UUID
    positions: dict[str, int]  # topic (short) -> position of its first event


def listing_events(market: Any, device_id: str, account_id: str, key: SigningKey, offer: dict[str, Any] | None = None,
                   listing_key: str = "lk-1") -> uuid.UUID:
    """Publish and update a listing as the catalogue does, keeping the proof value in the events
    (the update adds " (v2)" to the title)."""
    offer = dict(offer or OFFER)
    credential = publish_credential(key, offer, listing_key=listing_key)
    listing_id = listing_id_for(device_id, listing_key)
    metadata = {k: v for k, v in offer.items() if k not in ("price_minor", "currency")}
    listing = Listing(id=listing_id, meta=META, account_id=account_id, device_id=device_id, listing_key=listing_key,
                      metadata=metadata, price_minor=offer["price_minor"], currency=offer["currency"],
                      proof=_proof(credential, key))
    title = f"{offer['title']} (v2)"
    updated = update_credential(key, str(listing_id), {**offer, "title": title})
    listing.update(META, account_id=account_id, metadata={**metadata, "title": title},
                   price_minor=offer["price_minor"], currency=offer["currency"], proof=_proof(updated, key))
    market.save(listing)
    return listing_id


def _proof(credential: dict[str, Any], key: SigningKey) -> dict[str, str]:
    return {"credential_digest": credential_digest(credential), "nonce": credential["proof"]["nonce"],
            "kid": key.verify_key.key_id, "created": credential["proof"]["created"],
            "proof_value": credential["proof"]["proofValue"]}


def build_signed(runtime: Any) -> SignedWorld:
    market = runtime.market
    market.keyring()
    client = testing.TestClient(create_app(runtime=runtime))
    seller, device = enrolled_node(client)
    buyer, _ = enrolled_node(client)
    new = SigningKey.generate()
    body = rotation_body(seller.key, new, seller.device_id, device["kx"])
    r = client.simulate_post(f"/v1/devices/{seller.device_id}/keys", json=body,
                             headers=auth(device_jwt(seller.key, seller.device_id, market.now_s())))
    assert r.status_code == 201, r.json
    seller.key = new
    account_id = market.devices.device(seller.device_id).account_id
    listing_id = listing_events(market, seller.device_id, account_id, new)
    hub_key = SigningKey.from_seed(bytes(market.secrets.signing_key("signing-1")))
    sale = Sale(hub_key=hub_key, device_key=new, device_id=seller.device_id)
    market.save(sale.purchase())
    service = TraceService(market)

    def take(node: SimNode, kind: str, entry_body: dict[str, Any]) -> None:
        principal = Principal("device", "", ("seller",), device_id=node.device_id)
        result = service.intake(Meta(f"device:{node.device_id}", "t").as_dict(), principal,
                                [node.envelope(node.append(kind, entry_body))])["results"][0]
        assert result["effect"] == "applied", result

    take(seller, "redemption", {"jti": sale.jti, "purchase_id": str(sale.purchase_id), "listing_id": sale.listing_id,
                                "device_id": seller.device_id, "jkt": sale.jkt, "bound_at_ms": 1_760_000_000_100})
    confirmation = sale.confirmation()
    take(buyer, "confirmation", confirmation)
    take(seller, "receipt", sale.receipt(confirmation=confirmation))
    positions: dict[str, int] = {}
    for n in market.recorder.select_notifications(start=0, limit=10_000, inclusive_of_start=False):
        positions.setdefault(n.topic.rsplit(":", 1)[-1], n.id)
        if n.topic.endswith("TraceRecorded"):
            positions[f"TraceRecorded:{market.mapper.to_domain_event(n).kind}"] = n.id
    return SignedWorld(runtime, seller, buyer, sale, listing_id, positions)
