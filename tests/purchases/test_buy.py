"""POST /v1/purchases: the price of the listing's current version, paid from the channel
through the debit batcher, the purchase and its token recorded together; each refusal with
its own code and nothing recorded."""

from __future__ import annotations

import time
from uuid import UUID

import pytest

from domain.model.base import Meta
from domain.model.delivery import verify_delivery_token
from domain.model.device import Device
from domain.model.keys import SigningKey, VerifyKey
from domain.model.listing import Listing
from tests.catalogue.helpers import delist, listing, update
from tests.money.conftest import open_card_channel
from tests.purchases.shop import delivery_of


def hub_keys(shop) -> dict[str, VerifyKey]:
    signing = shop.client.simulate_get("/.well-known/ai-market.json").json["signing_key"]
    return {signing["kid"]: VerifyKey.from_multibase(signing["public_key"])}


def test_a_purchase_pays_the_price_and_carries_a_token_the_seller_s_node_accepts(shop) -> None:
    seller = shop.seller()
    listing_id = shop.listing(seller, price_minor=1999)
    buyer = shop.buyer(10_000)
    r = shop.buy(buyer, listing_id)
    assert r.status_code == 201, r.json
    assert r.headers["Idempotent-Replayed"] == "false"
    p = r.json
    assert (p["status"], p["price_minor"], p["fee_minor"], p["currency"]) == ("issued", 1999, 99, "USD")
    assert p["seller_net_minor"] == 1900 and p["listing_version"] == 1
    assert shop.channel(buyer)["spent_minor"] == 1999
    claims = verify_delivery_token(p["delivery_token"], hub_keys(shop), audience=seller["id"],
                                   now_s=int(time.time()))
    delivery = delivery_of()
    assert claims.sub == p["id"] and claims.iss == "http://hub.test" and claims.aud == seller["id"]
    assert claims.jti == p["token"]["jti"] and claims.listing_id == listing_id and claims.listing_version == 1
    assert (claims.content_hash, claims.size_bytes, claims.raw["blocks"]) == (
        delivery["object_hash"], delivery["size_bytes"], delivery["blocks"])
    assert claims.byte_limit == 2 * delivery["size_bytes"]
    assert claims.cnf_jkt == p["token"]["cnf_jkt"]
    assert claims.raw["seller_keys"]["ed25519"] == seller["key"].verify_key.to_multibase()
    assert claims.raw["seller_keys"]["x25519"] == seller["device"]["kx"].public_key.to_multibase()
    assert claims.endpoint == "127.0.0.1:9090"  # the device's registered endpoint, as host:port
    assert claims.start_by - claims.iat == 15 * 60 and claims.exp - claims.iat == 24 * 3600


def test_a_retry_replays_the_same_purchase_and_token_and_another_body_is_refused(shop) -> None:
    seller = shop.seller()
    listing_id, other_id = shop.listing(seller), shop.listing(seller)
    buyer = shop.buyer(10_000)
    key = SigningKey.generate()
    first = shop.buy(buyer, listing_id, key="k-1", buyer_key=key)
    again = shop.buy(buyer, listing_id, key="k-1", buyer_key=key)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["delivery_token"] == first.json["delivery_token"] and again.json["id"] == first.json["id"]
    assert shop.channel(buyer)["spent_minor"] == 1999  # paid once
    other = shop.buy(buyer, other_id, key="k-1", buyer_key=key)
    assert other.status_code == 409 and other.json["code"] == "idempotency_key_reused"
    # A fresh process (cold caches) replays it from the store too.
    shop.market.purchases._recent.clear()
    shop.runtime.debit_batcher._channels.clear()
    cold = shop.buy(buyer, listing_id, key="k-1", buyer_key=key)
    assert cold.status_code == 201 and cold.json["delivery_token"] == first.json["delivery_token"]
    assert shop.channel(buyer)["spent_minor"] == 1999


def test_the_price_is_the_current_version_s(shop) -> None:
    seller = shop.seller()
    listing_id = shop.listing(seller, price_minor=1000)
    buyer = shop.buyer(10_000)
    assert shop.buy(buyer, listing_id).json["price_minor"] == 1000  # the listing is cached now
    item = listing("repriced", price_minor=3000, delivery=delivery_of())
    assert update(shop.client, seller, listing_id, item).status_code == 200
    p = shop.buy(buyer, listing_id).json
    assert (p["price_minor"], p["listing_version"]) == (3000, 2)
    assert shop.channel(buyer)["spent_minor"] == 4000


def refused(r, status: int, code: str) -> None:
    assert (r.status_code, r.json.get("code")) == (status, code), r.json


def test_each_refusal_has_its_code_and_records_nothing(shop) -> None:
    seller = shop.seller()
    buyer = shop.buyer(3000)
    listing_id = shop.listing(seller, price_minor=1999)
    not_deliverable, in_euros, delisted = (shop.listing(seller, deliverable=False),
                                          shop.listing(seller, currency="EUR"), shop.listing(seller))
    assert delist(shop.client, seller, delisted).status_code == 200
    stranger = shop.buyer(3000)  # a channel of another account
    head = shop.market.recorder.max_notification_id()

    refused(shop.buy(buyer, "00000000-0000-4000-8000-000000000000"), 404, "listing_not_found")
    refused(shop.buy(buyer, not_deliverable), 409, "listing_not_deliverable")
    refused(shop.buy(buyer, in_euros), 422, "currency_mismatch")
    refused(shop.buy(buyer, delisted), 409, "listing_delisted")
    refused(shop.buy(buyer, listing_id, channel_id=stranger["channel_id"]), 404, "not_found")
    refused(shop.buy(buyer, listing_id, channel_id="00000000-0000-4000-8000-000000000001"), 404, "not_found")
    refused(shop.buy(buyer, listing_id, buyer_jkt="short"), 422, "invalid_input")
    r = shop.client.simulate_post("/v1/purchases", json={"listing_id": listing_id, "channel_id": buyer["channel_id"],
                                                         "buyer_jkt": "A" * 43}, headers=buyer["headers"])
    refused(r, 422, "invalid_input")  # no Idempotency-Key
    assert shop.market.recorder.max_notification_id() == head  # nothing recorded, nothing billed

    assert shop.buy(buyer, listing_id).status_code == 201
    head = shop.market.recorder.max_notification_id()
    refused(shop.buy(buyer, listing_id), 402, "channel_exhausted")  # 1001 left of 3000
    assert shop.market.recorder.max_notification_id() == head
    assert shop.channel(buyer)["spent_minor"] == 1999


def test_own_listing_is_refused(shop) -> None:
    seller = shop.seller()  # an account with buyer and seller roles
    listing_id = shop.listing(seller)
    channel_id = open_card_channel(shop.client, shop.stub, seller, 5000)[0]
    refused(shop.buy({**seller, "channel_id": channel_id}, listing_id), 403, "own_listing")
    assert shop.client.simulate_get(f"/v1/channels/{channel_id}", headers=seller["headers"]).json["spent_minor"] == 0


def test_a_suspended_seller_device_cannot_sell(shop) -> None:
    seller = shop.seller()
    listing_id = shop.listing(seller)
    buyer = shop.buyer()
    assert shop.buy(buyer, listing_id).status_code == 201  # device cached as active
    device = shop.market.load(Device, UUID(seller["id"]))
    device.suspend(Meta.system("test").as_dict(), "abuse")  # no route yet: an operator's act
    shop.market.save(device)
    refused(shop.buy(buyer, listing_id), 409, "seller_device_suspended")
    assert shop.channel(buyer)["spent_minor"] == 1999


def test_a_free_listing_is_bought_without_a_debit(shop) -> None:
    seller = shop.seller()
    listing_id = shop.listing(seller, price_minor=0)
    buyer = shop.buyer(100)
    r = shop.buy(buyer, listing_id)
    assert r.status_code == 201 and (r.json["price_minor"], r.json["fee_minor"]) == (0, 0)
    assert shop.channel(buyer)["spent_minor"] == 0


@pytest.mark.parametrize("store", ["postgres"])
def test_a_listing_changed_by_another_host_is_read_again_before_the_commit(shop, store) -> None:
    seller = shop.seller()
    listing_id = shop.listing(seller, price_minor=1000)
    buyer = shop.buyer(10_000)
    assert shop.buy(buyer, listing_id).status_code == 201  # cached at version 1
    # Another host reprices it: this process's cache does not see it, its saver does.
    fresh = shop.market.load(Listing, UUID(listing_id))
    fresh.update({"actor": "test", "correlation_id": "c", "causation_id": ""}, account_id=fresh.account_id,
                 metadata=fresh.metadata, price_minor=2500, currency="USD", proof={})
    shop.market.save(fresh)
    before = shop.runtime.debit_batcher.conflicts
    p = shop.buy(buyer, listing_id).json
    assert (p["price_minor"], p["listing_version"]) == (2500, 2)
    assert shop.runtime.debit_batcher.conflicts == before + 1
    assert shop.channel(buyer)["spent_minor"] == 3500


def test_listing_detail_shows_its_delivery_commitment_and_version(shop) -> None:
    seller = shop.seller()
    listing_id, bare = shop.listing(seller), shop.listing(seller, deliverable=False)
    shop.catch_up()
    detail = shop.client.simulate_get(f"/v1/listings/{listing_id}").json
    assert detail["delivery"] == delivery_of() and detail["version"] == 1
    assert shop.client.simulate_get(f"/v1/listings/{bare}").json["delivery"] is None


def test_a_cold_retry_of_a_free_purchase_is_caught_by_the_save_and_replayed(shop) -> None:
    # No debit to replay: the saver finds the purchase exists, and the batch runs again.
    seller = shop.seller()
    listing_id = shop.listing(seller, price_minor=0)
    buyer = shop.buyer(100)
    key = SigningKey.generate()
    first = shop.buy(buyer, listing_id, key="k-free", buyer_key=key)
    shop.market.purchases._recent.clear()  # another process, or this one restarted
    before = shop.runtime.debit_batcher.conflicts
    again = shop.buy(buyer, listing_id, key="k-free", buyer_key=key)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json["delivery_token"] == first.json["delivery_token"]
    assert shop.runtime.debit_batcher.conflicts == before + 1
