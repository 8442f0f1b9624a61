"""A small market for purchase tests: sellers with devices and deliverable listings, buyers
with funded card channels, and purchases made through the HTTP API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from domain.model.blocks import BlockCommitment, block_hash
from domain.model.delivery import jwk_thumbprint
from domain.model.jcs import sha256_sri
from domain.model.keys import SigningKey
from tests.catalogue.helpers import listing, node, publish
from tests.money.conftest import open_card_channel, person

BLOCK = 4096
PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes: three blocks


def delivery_of(payload: bytes = PAYLOAD, block_size: int = BLOCK) -> dict[str, Any]:
    hashes = [block_hash(payload[i:i + block_size]) for i in range(0, max(len(payload), 1), block_size)]
    return {"object_hash": sha256_sri(payload), "size_bytes": len(payload),
            "blocks": BlockCommitment.build(len(payload), block_size, hashes).to_json()}


@dataclass
class Shop:
    runtime: Any
    client: Any
    stub: Any

    @property
    def market(self) -> Any:
        return self.runtime.market

    def seller(self) -> dict[str, Any]:
        """A seller account with an enrolled device (``node``) and its session headers."""
        n = node(self.client)
        from tests.helpers import auth, login

        n["headers"] = auth(login(self.client, n["seller"]["email"]))
        return n

    def listing(self, seller: dict[str, Any], *, price_minor: int = 1999, currency: str = "USD",
                deliverable: bool = True, title: str | None = None) -> str:
        extra = {"delivery": delivery_of()} if deliverable else {}
        item = listing(title or f"dataset {uuid.uuid4().hex[:8]}", price_minor=price_minor, currency=currency,
                       **extra)
        r = publish(self.client, seller, item)
        assert r.status_code == 201, r.json
        return r.json["id"]

    def buyer(self, amount_minor: int = 10_000, currency: str = "USD") -> dict[str, Any]:
        buyer = person(self.client, ["buyer"])
        buyer["channel_id"] = open_card_channel(self.client, self.stub, buyer, amount_minor, currency)[0]
        return buyer

    def buy(self, buyer: dict[str, Any], listing_id: str, *, key: str | None = None,
            buyer_key: SigningKey | None = None, channel_id: str | None = None, **extra: Any) -> Any:
        buyer_key = buyer_key or SigningKey.generate()
        body = {"listing_id": listing_id, "channel_id": channel_id or buyer["channel_id"],
                "buyer_jkt": jwk_thumbprint(buyer_key.verify_key), **extra}
        return self.client.simulate_post("/v1/purchases", json=body,
                                         headers={**buyer["headers"], "Idempotency-Key": key or uuid.uuid4().hex})

    def channel(self, buyer: dict[str, Any]) -> dict[str, Any]:
        return self.client.simulate_get(f"/v1/channels/{buyer['channel_id']}", headers=buyer["headers"]).json

    def catch_up(self) -> None:
        for runner in self.runtime.runners():
            runner.catch_up()
