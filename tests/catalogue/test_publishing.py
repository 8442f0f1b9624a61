"""Publishing, updating and delisting: the signed credential path and each refusal code."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

from domain.model.keys import SigningKey
from node.publishing import publish_credential
from tests.catalogue.helpers import catch_up, delist, headers, listing, node, publish, update
from tests.helpers import auth


def test_publish_update_delist_round_trip(client, runtime) -> None:
    n = node(client)
    r = publish(client, n, listing("Hospital admissions 2023"), key="admissions")
    assert r.status_code == 201, r.json
    listing_id = r.json["id"]
    assert r.json["device_id"] == n["id"] and r.json["account_id"] == n["seller"]["id"]
    # A retry with a fresh credential and the same content lands on the same listing.
    again = publish(client, n, listing("Hospital admissions 2023"), key="admissions")
    assert again.status_code == 201 and again.json["id"] == listing_id
    clash = publish(client, n, listing("Something else"), key="admissions")
    assert clash.status_code == 409 and clash.json["code"] == "already_exists"

    r = update(client, n, listing_id, listing("Hospital admissions 2023", price_minor=2500))
    assert r.status_code == 200 and r.json["price_minor"] == 2500, r.json
    r = delist(client, n, listing_id)
    assert r.status_code == 200 and r.json["status"] == "delisted"
    assert update(client, n, listing_id, listing("x")).json["code"] == "invalid_state"

    catch_up(runtime)
    detail = client.simulate_get(f"/v1/listings/{listing_id}")
    assert detail.status_code == 200 and detail.json["status"] == "delisted"
    events = runtime.market.recorder.select_events(runtime.market.catalogue.listing(listing_id).id)
    assert len(events) == 3


def test_each_refusal_has_its_own_code(client, runtime) -> None:
    n = node(client)
    other = node(client)
    codes = {}

    tampered = publish_credential(n["key"], listing("Tampered"))
    tampered["credentialSubject"]["listing"]["price_minor"] = 1
    codes["tampered"] = client.simulate_post("/v1/listings", json=tampered, headers=headers(n))

    credential = publish_credential(n["key"], listing("Replayed"))
    first = client.simulate_post("/v1/listings", json=credential, headers=headers(n))
    assert first.status_code == 201, first.json
    codes["replayed"] = client.simulate_post("/v1/listings", json=credential, headers=headers(n))

    stranger = SigningKey.generate()  # never enrolled
    codes["unenrolled"] = client.simulate_post(
        "/v1/listings", json=publish_credential(stranger, listing("Unenrolled")), headers=headers(n))
    codes["foreign"] = client.simulate_post(
        "/v1/listings", json=publish_credential(other["key"], listing("Foreign")), headers=headers(n))
    old = datetime.now(UTC) - timedelta(minutes=10)
    codes["stale"] = client.simulate_post(
        "/v1/listings", json=publish_credential(n["key"], listing("Stale"), now=old), headers=headers(n))
    codes["not_owner"] = update(client, other, first.json["id"], listing("Mine now"))
    smuggled = copy.deepcopy(listing("Smuggled"))
    smuggled["rows_sample"] = [["alice@example.com"]]
    codes["schema"] = client.simulate_post("/v1/listings", json=publish_credential(n["key"], smuggled),
                                           headers=headers(n))
    codes["session"] = client.simulate_post("/v1/listings", json=publish_credential(n["key"], listing("S")),
                                            headers=auth(n["seller"]["session"]))

    got = {name: (r.status_code, r.json["code"]) for name, r in codes.items()}
    assert got == {
        "tampered": (401, "signature_invalid"), "replayed": (401, "nonce_replayed"),
        "unenrolled": (403, "device_not_enrolled"), "foreign": (403, "foreign_device"),
        "stale": (401, "credential_stale"), "not_owner": (403, "not_listing_owner"),
        "schema": (422, "invalid_input"), "session": (403, "forbidden"),
    }
    assert len({code for _, code in got.values()}) == len(got)


def test_suspended_device_and_expired_key(client, runtime) -> None:
    n = node(client)
    runtime.market.retrying(lambda: _suspend(runtime, n["id"]))
    r = client.simulate_post("/v1/listings", json=publish_credential(n["key"], listing("Suspended")),
                             headers=headers(n))
    assert r.status_code == 403 and r.json["code"] == "device_suspended"


def _suspend(runtime, device_id: str) -> None:
    device = runtime.market.devices.device(device_id)
    device.suspend({"actor": "system", "correlation_id": "t", "causation_id": ""}, "test")
    runtime.market.save(device)
