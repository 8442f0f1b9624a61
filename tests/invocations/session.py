"""A small market for invocation tests: sellers with devices and compute listings, buyers with
funded card channels, sessions opened over HTTP, and the seller node's final report made with
the receipt issuers of ``domain.model.invoke_receipts``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from domain.model.base import Meta
from domain.model.delivery import jwk_thumbprint
from domain.model.device import Device
from domain.model.invoke import InvokeClaims, verify_invoke_token
from domain.model.invoke_receipts import issue_countersignature, issue_receipt
from domain.model.keys import SigningKey
from node.delivery.run import hub_keys_from_discovery
from tests.catalogue.helpers import listing
from tests.compute.parties import subject
from tests.purchases.shop import Shop

META = Meta.system("test").as_dict()


@dataclass
class Session:
    buyer: dict[str, Any]
    seller: dict[str, Any]
    buyer_key: SigningKey
    answer: dict[str, Any]
    claims: InvokeClaims

    @property
    def id(self) -> str:
        return self.answer["id"]


@dataclass
class Market(Shop):
    def compute_listing(self, seller: dict[str, Any], *, price_minor: int = 7, unit: str = "calls",
                        currency: str = "USD", max_units_per_call: int | None = None) -> str:
        item = listing(f"pipeline {uuid.uuid4().hex[:8]}", price_minor=price_minor, currency=currency,
                       kind="pipeline", metering_unit=unit, framework="python")
        if max_units_per_call is not None:
            item["max_units_per_call"] = max_units_per_call
        from tests.catalogue.helpers import publish

        r = publish(self.client, seller, item)
        assert r.status_code == 201, r.json
        return r.json["id"]

    def open(self, buyer: dict[str, Any], listing_id: str, *, budget_minor: int = 100, key: str | None = None,
             buyer_key: SigningKey | None = None, **extra: Any) -> Any:
        body = {"listing_id": listing_id, "channel_id": buyer["channel_id"], "budget_minor": budget_minor,
                "buyer_jkt": jwk_thumbprint((buyer_key or SigningKey.generate()).verify_key), **extra}
        return self.client.simulate_post("/v1/invocations", json=body,
                                         headers={**buyer["headers"], "Idempotency-Key": key or uuid.uuid4().hex})

    def session(self, *, budget_minor: int = 100, deposit_minor: int = 10_000, **extra: Any) -> Session:
        seller = self.seller()
        listing_id = self.compute_listing(seller)
        buyer = self.buyer(deposit_minor)
        buyer_key = SigningKey.generate()
        r = self.open(buyer, listing_id, budget_minor=budget_minor, buyer_key=buyer_key, **extra)
        assert r.status_code == 201, r.json
        return Session(buyer, seller, buyer_key, r.json, self.verify(r.json["invoke_token"], seller["id"]))

    def verify(self, token: str, device_id: str) -> InvokeClaims:
        keys = hub_keys_from_discovery(self.client.simulate_get("/.well-known/ai-market.json").json)
        return verify_invoke_token(token, keys, audience=device_id, now_s=self.market.now_s())

    def device(self, session: Session) -> Device:
        return self.market.load(Device, UUID(session.seller["id"]))

    def final_body(self, session: Session, cumulative_units: int, *, countersigned_units: int | None = None,
                   **overrides: Any) -> dict[str, Any]:
        claims = session.claims
        final = issue_receipt(subject(claims, cumulative_units + 1, cumulative_units=cumulative_units,
                                      outcome="final", **overrides), session.seller["key"],
                              now_ms=claims.iat * 1000, nonce="final-receipt-nonce-01")
        countersignature = None
        if countersigned_units is not None:
            receipt = issue_receipt(subject(claims, max(countersigned_units, 1), cumulative_units=countersigned_units),
                                    session.seller["key"], now_ms=claims.iat * 1000, nonce="call-receipt-nonce-01")
            countersignature = issue_countersignature(receipt, session.buyer_key, now_ms=claims.iat * 1000,
                                                      nonce="countersign-nonce-01")
        return {"jti": claims.jti, "invocation_id": session.id, "receipt": final,
                "countersignature": countersignature}

    def report_final(self, session: Session, body: dict[str, Any]) -> tuple[Any, ...]:
        """What the trace intake does with an ``invoke_final`` entry: decide, then one save."""
        def command() -> tuple[Any, ...]:
            changed = self.market.invocations.apply_final(META, self.device(session), body)
            if changed:
                self.market.save(*changed)
            return changed

        return self.market.retrying(command)
