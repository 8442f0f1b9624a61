"""Reading purchases (who sees what), the token's lifecycle through the HTTP API, revocation
and the expiry sweep (freezegun)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from freezegun import freeze_time

from tests.helpers import auth, login, register
from workers.purchases import sweep_purchase_tokens

META = {"actor": "test", "correlation_id": "c", "causation_id": ""}


def auditor(shop) -> dict:
    account = register(shop.client, roles=["buyer"])
    shop.market.identity.grant_role(META, account["email"], "auditor")
    return {**account, "headers": auth(login(shop.client, account["email"]))}


def test_who_sees_a_purchase(shop) -> None:
    seller = shop.seller()
    buyer = shop.buyer()
    purchase = shop.buy(buyer, shop.listing(seller)).json
    path = f"/v1/purchases/{purchase['id']}"
    as_buyer = shop.client.simulate_get(path, headers=buyer["headers"])
    assert as_buyer.status_code == 200 and as_buyer.json["delivery_token"] == purchase["delivery_token"]
    as_seller = shop.client.simulate_get(path, headers=seller["headers"])
    assert as_seller.status_code == 200 and "delivery_token" not in as_seller.json
    assert as_seller.json["price_minor"] == 1999 and as_seller.json["status"] == "issued"
    as_auditor = shop.client.simulate_get(path, headers=auditor(shop)["headers"])
    assert as_auditor.status_code == 200 and "delivery_token" not in as_auditor.json
    stranger = shop.buyer()
    r = shop.client.simulate_get(path, headers=stranger["headers"])
    assert (r.status_code, r.json["code"]) == (404, "purchase_not_found")
    r = shop.client.simulate_get(path)
    assert (r.status_code, r.json["code"]) == (401, "unauthenticated")
    r = shop.client.simulate_get("/v1/purchases/00000000-0000-4000-8000-000000000000", headers=buyer["headers"])
    assert (r.status_code, r.json["code"]) == (404, "purchase_not_found")


def test_lists_for_buyer_seller_and_auditor_paginated(shop) -> None:
    seller, other_seller = shop.seller(), shop.seller()
    buyer = shop.buyer(100_000)
    listing_id, other_id = shop.listing(seller, price_minor=100), shop.listing(other_seller, price_minor=100)
    mine = [shop.buy(buyer, listing_id).json["id"] for _ in range(3)]
    theirs = shop.buy(shop.buyer(), other_id).json["id"]
    shop.catch_up()
    get = shop.client.simulate_get
    page = get("/v1/purchases", params={"limit": "2"}, headers=buyer["headers"]).json
    assert [i["id"] for i in page["items"]] == mine[::-1][:2] and page["next_cursor"]
    assert "delivery_token" not in page["items"][0] and "jti" not in page["items"][0]
    rest = get("/v1/purchases", params={"limit": "2", "cursor": page["next_cursor"]}, headers=buyer["headers"]).json
    assert [i["id"] for i in rest["items"]] == mine[:1] and rest["next_cursor"] is None
    sold = get("/v1/purchases", params={"role": "seller"}, headers=seller["headers"]).json
    assert {i["id"] for i in sold["items"]} == set(mine)
    assert get("/v1/purchases", params={"role": "buyer"}, headers=seller["headers"]).json["items"] == []
    everyone = get("/v1/purchases", headers=auditor(shop)["headers"]).json
    assert {*mine, theirs} <= {i["id"] for i in everyone["items"]}
    issued = get("/v1/purchases", params={"status": "issued"}, headers=buyer["headers"]).json
    assert len(issued["items"]) == 3 and issued["items"][0]["status"] == "issued"
    assert get("/v1/purchases", params={"cursor": "x"}, headers=buyer["headers"]).status_code == 422
    for query in ("stauts=issued", "=0", "limit=2&x="):  # a typo is refused, never ignored
        r = get("/v1/purchases", query_string=query, headers=buyer["headers"])
        assert (r.status_code, r.json["code"]) == (422, "invalid_input"), query
    r = get(f"/v1/purchases/{mine[0]}", query_string="x=1", headers=buyer["headers"])
    assert (r.status_code, r.json["code"]) == (422, "invalid_input")
    assert get("/v1/purchases").status_code == 401


def test_the_seller_or_an_admin_revokes_an_unredeemed_token(shop) -> None:
    seller = shop.seller()
    buyer = shop.buyer()
    listing_id = shop.listing(seller)
    purchase = shop.buy(buyer, listing_id).json
    path = f"/v1/purchases/{purchase['id']}/revoke"
    r = shop.client.simulate_post(path, json={"reason": "x"}, headers=buyer["headers"])
    assert (r.status_code, r.json["code"]) == (403, "forbidden")  # a buyer (not a seller) account
    r = shop.client.simulate_post(path, json={"reason": "cannot deliver"}, headers=seller["headers"])
    assert r.status_code == 200 and r.json["status"] == "revoked"
    assert r.json["token"]["revoked_at_s"] is not None
    again = shop.client.simulate_post(path, json={}, headers=seller["headers"])
    assert again.status_code == 200 and again.json["status"] == "revoked"
    other_seller = shop.seller()
    r = shop.client.simulate_post(path, json={}, headers=other_seller["headers"])
    assert (r.status_code, r.json["code"]) == (404, "purchase_not_found")
    # Redeemed tokens cannot be revoked.
    second = shop.buy(buyer, listing_id).json
    p = shop.market.purchases.purchase(second["id"])
    p.record_redemption(META, jti=p.jti, device_id=p.seller_device_id, buyer_jkt=p.cnf_jkt, redeemed_at_ms=1)
    shop.market.save(p)
    r = shop.client.simulate_post(f"/v1/purchases/{second['id']}/revoke", json={}, headers=seller["headers"])
    assert (r.status_code, r.json["code"]) == (409, "purchase_not_revocable")
    shop.catch_up()
    listed = shop.client.simulate_get("/v1/purchases", headers=buyer["headers"]).json["items"]
    assert {i["id"]: i["status"] for i in listed} == {purchase["id"]: "revoked", second["id"]: "redeemed"}


def test_the_sweep_expires_tokens_not_started_or_not_delivered(shop) -> None:
    # Bought on the real clock (the batcher's event loop needs time to pass), swept on a frozen one.
    seller = shop.seller()
    buyer = shop.buyer(100_000)
    listing_id = shop.listing(seller, price_minor=10)
    idle, started = shop.buy(buyer, listing_id).json, shop.buy(buyer, listing_id).json
    p = shop.market.purchases.purchase(started["id"])
    p.record_redemption(META, jti=p.jti, device_id=p.seller_device_id, buyer_jkt=p.cnf_jkt,
                        redeemed_at_ms=idle["token"]["issued_at_s"] * 1000 + 1000)
    shop.market.save(p)
    shop.catch_up()
    issued = datetime.fromtimestamp(idle["token"]["issued_at_s"], UTC)
    with freeze_time(issued + timedelta(minutes=15, seconds=29)) as frozen:
        assert sweep_purchase_tokens(shop.runtime) == []  # within start_by + the 30 s skew
        frozen.tick(timedelta(seconds=5))
        assert sweep_purchase_tokens(shop.runtime) == [idle["id"]]
        assert sweep_purchase_tokens(shop.runtime) == []  # the read model lags; the purchase decides
        shop.catch_up()
        assert sweep_purchase_tokens(shop.runtime) == []
        frozen.tick(timedelta(hours=24))  # past exp: the started one was never delivered
        assert sweep_purchase_tokens(shop.runtime) == [started["id"]]
        shop.catch_up()
    view = shop.client.simulate_get(f"/v1/purchases/{idle['id']}", headers=buyer["headers"]).json
    assert view["status"] == "expired" and view["token"]["expired_reason"] == "not_started"
    listed = shop.client.simulate_get("/v1/purchases", headers=buyer["headers"]).json["items"]
    assert {i["id"]: (i["status"], i["expired_reason"]) for i in listed} == {
        idle["id"]: ("expired", "not_started"), started["id"]: ("expired", "not_delivered")}
    assert shop.channel(buyer)["spent_minor"] == 20  # an expiry refunds nothing (not built)


def test_the_sweep_is_a_cron_job(shop) -> None:
    from dramatiq.brokers.stub import StubBroker

    from workers.jobs import Jobs, schedules

    jobs = Jobs(StubBroker(), lambda: shop.runtime)
    assert "sweep_purchase_tokens" in {s.name for s in schedules(jobs)}
