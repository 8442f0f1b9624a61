"""Listing credentials for tests: a seller, an enrolled device, a signed publish."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from node.publishing import delist_credential, publish_credential, update_credential
from tests.helpers import auth, device_jwt, enroll, seller_with_key


def content_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def listing(title: str, description: str = "", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "title": title, "description": description, "kind": "dataset", "category": "health",
        "tags": ["tabular"], "licence": "CC-BY-4.0", "price_minor": 1999, "currency": "USD",
        "content_hash": content_hash(title + description), "size_bytes": 1000, "rows": 10,
        "columns": [{"name": "admission_date", "type": "date", "example_format": "9999-99-99", "pii_kind": None}],
        "pii": {"verdict": "none", "kinds_detected": [], "by_kind": {}},
        "quality": {"score": 80, "components": {"completeness": 90}}, "report_version": 1,
    }
    base.update(overrides)
    return base


def node(client: Any, seller: dict[str, Any] | None = None) -> dict[str, Any]:
    """An enrolled device of a (new) seller, with a helper to post as it."""
    seller = seller or seller_with_key(client)
    device = enroll(client, seller)
    return {"seller": seller, "device": device, "key": device["key"], "id": device["id"]}


def headers(n: dict[str, Any]) -> dict[str, str]:
    return auth(device_jwt(n["key"], n["id"], int(time.time())))


def publish(client: Any, n: dict[str, Any], item: dict[str, Any], key: str | None = None) -> Any:
    return client.simulate_post("/v1/listings", json=publish_credential(n["key"], item, key), headers=headers(n))


def update(client: Any, n: dict[str, Any], listing_id: str, item: dict[str, Any]) -> Any:
    return client.simulate_put(f"/v1/listings/{listing_id}", json=update_credential(n["key"], listing_id, item),
                               headers=headers(n))


def delist(client: Any, n: dict[str, Any], listing_id: str) -> Any:
    return client.simulate_delete(f"/v1/listings/{listing_id}", json=delist_credential(n["key"], listing_id, "gone"),
                                  headers=headers(n))


def catch_up(runtime: Any) -> None:
    for runner in runtime.runners():
        runner.catch_up()
