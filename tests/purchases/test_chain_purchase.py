"""A purchase from an on-chain channel carries the buyer's cumulative voucher, as a debit does
(in-process chain, embedded store)."""

from __future__ import annotations

import pytest

from domain.model.delivery import jwk_thumbprint
from domain.model.keys import SigningKey
from domain.model.voucher import sign_voucher
from node.publishing import publish_credential
from ops.bootstrap import build_runtime
from tests.catalogue.helpers import headers, listing
from tests.helpers import enroll
from tests.money.chain_helpers import party
from tests.money.test_settlement import Hub
from tests.purchases.shop import delivery_of


@pytest.fixture
def hub(make_settings):
    rt = build_runtime(make_settings("sqlite"))
    yield Hub(rt)
    rt.close()


def test_a_chain_purchase_needs_a_covering_voucher(hub: Hub) -> None:
    client, a = hub.client, hub.accounts
    buyer = party(client, ["buyer"], a[3], hub.hub_url)
    seller = party(client, ["seller"], a[4], hub.hub_url)
    api_key = client.simulate_post("/v1/api-keys", json={"name": "node"}, headers=seller.headers).json["secret"]
    device = enroll(client, {**seller.account, "api_key": api_key})
    n = {"key": device["key"], "id": device["id"]}
    item = listing("sold for tokens", price_minor=10_000, currency="TUSD", delivery=delivery_of())
    published = client.simulate_post("/v1/listings", json=publish_credential(n["key"], item), headers=headers(n))
    assert published.status_code == 201, published.json
    channel = hub.funded_channel(buyer, 100_000)

    def buy(cumulative: int | None, signer=None, key: str = "k"):
        body = {"listing_id": published.json["id"], "channel_id": channel["id"],
                "buyer_jkt": jwk_thumbprint(SigningKey.generate().verify_key)}
        if cumulative is not None:
            sig = sign_voucher((signer or buyer.key).key, hub.domain, channel["chain_channel_id"], cumulative)
            body["voucher"] = {"cumulative_minor": cumulative, "signature": "0x" + sig.hex()}
        return client.simulate_post("/v1/purchases", json=body, headers={**buyer.headers, "Idempotency-Key": key})

    bare = buy(None, key="k-bare")
    assert (bare.status_code, bare.json["param"]) == (422, "voucher")
    short = buy(9_999, key="k-short")
    assert short.status_code == 422
    forged = buy(10_000, signer=a[6], key="k-forged")
    assert (forged.status_code, forged.json["code"]) == (401, "signature_invalid")
    ok = buy(10_000, key="k-ok")
    assert ok.status_code == 201, ok.json
    assert (ok.json["price_minor"], ok.json["fee_minor"], ok.json["currency"]) == (10_000, 500, "TUSD")
    view = hub.market.money.channel(channel["id"]).to_public()
    assert (view["spent_minor"], view["voucher_minor"]) == (10_000, 10_000)
