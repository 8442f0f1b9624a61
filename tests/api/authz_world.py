"""The owner's world for the authorization matrix (``tests/api/test_authorization_matrix.py``):
the parties, the owner's real data, and what each route is sent by each actor.

Every request aims at the owner's objects: its ids in the path, its channel in a purchase, its
device's signed credentials and outbox entries replayed by another device, its challenge, its
wallet signature and two-factor code sent by others. The owner's own request is one that must
succeed (``owner_sees``: a value its answer must carry, so the cell is not vacuous)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyotp
from eth_account import Account

from api.authz import ANONYMOUS
from domain.model.delivery import jwk_thumbprint
from domain.model.device import enrollment_message
from domain.model.keys import KxPrivateKey, SigningKey, b64url
from node.publishing import delist_credential, publish_credential, update_credential
from tests.catalogue.helpers import listing
from tests.helpers import PASSWORD, auth, device_jwt, login, register, rotation_body
from tests.money.chain_helpers import wallet_signature
from tests.money.conftest import open_card_channel
from tests.purchases.shop import delivery_of
from tests.stubs import payment_intent_succeeded_event, sign_webhook
from tests.traces.helpers import SimNode

HUB = "http://hub.test"
META = {"actor": "test", "correlation_id": "authz-matrix", "causation_id": ""}


@dataclass
class Party:
    """An account and what it holds: session headers, an enrolled device (sellers)."""

    account: dict[str, Any]
    session: str
    device: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.account["id"]

    def device_headers(self) -> dict[str, str]:
        assert self.device is not None
        return auth(device_jwt(self.device["key"], self.device["id"], int(time.time())))


@dataclass
class World:
    client: Any
    runtime: Any
    stub: Any
    owner: Party
    parties: dict[str, Party]
    vendor: Party
    objects: dict[str, Any] = field(default_factory=dict)  # the owner's ids, keys and secrets
    private: set[str] = field(default_factory=set)  # values only the owner (and ALL cells) may see
    secrets: set[str] = field(default_factory=set)  # values nobody but the owner ever sees
    # Seen by the owner and by ALL cells (auditors), nobody else: the delivery token is in its
    # Purchase.Purchased event so an auditor can verify the hub's signature on it; it is bound to
    # the buyer's per-purchase key (cnf), useless without that key (docs/audit.md).
    auditable: set[str] = field(default_factory=set)
    owned: set[str] = field(default_factory=set)  # the owner's aggregate ids

    def head(self) -> int:
        return self.runtime.market.recorder.max_notification_id() or 0

    def since(self, head: int) -> list[Any]:
        return list(self.runtime.market.recorder.select_notifications(start=head + 1, limit=10_000,
                                                                      inclusive_of_start=True))

    def catch_up(self) -> None:
        for runner in self.runtime.runners():
            runner.catch_up()

    def headers(self, actor: str, need: Any) -> dict[str, str]:
        if actor == ANONYMOUS:
            return {}
        if actor == "owner":
            if "session" in need.kinds or need.public:
                return auth(self.owner.session)
            return self.owner.device_headers()
        if actor == "other_device":
            return self.parties["other_device"].device_headers()
        return auth(self.parties[actor].session)


def enroll(client: Any, party: Party, name: str, endpoint: str) -> dict[str, Any]:
    """Enroll a device for ``party`` (by its session) under a name and endpoint of its own."""
    key, kx = SigningKey.generate(), KxPrivateKey.generate()
    r = client.simulate_post("/v1/devices/challenges", json={}, headers=auth(party.session))
    assert r.status_code == 201, r.json
    fields = enrollment_fields(r.json["challenge"], key, kx, name, endpoint)
    signature = b64url(key.sign(enrollment_message(account_id=party.id, **fields)))
    r = client.simulate_post("/v1/devices", json={**fields, "signature": signature}, headers=auth(party.session))
    assert r.status_code == 201, r.json
    return {**r.json, "key": key, "kx": kx}


def enrollment_fields(challenge: str, key: SigningKey, kx: KxPrivateKey, name: str, endpoint: str) -> dict[str, str]:
    return {"challenge": challenge, "name": name, "endpoint": endpoint,
            "public_key": key.verify_key.to_multibase(), "kx_public_key": kx.public_key.to_multibase()}


def party(client: Any, roles: list[str], *, device: str | None = None) -> Party:
    account = register(client, roles=roles)
    p = Party(account, login(client, account["email"]))
    if device:
        p.device = enroll(client, p, device, f"http://{device}.example:9090")
    return p


def publish(client: Any, p: Party, title: str, **extra: Any) -> str:
    item = listing(title, price_minor=1999, delivery=delivery_of(), **extra)
    r = client.simulate_post("/v1/listings", json=publish_credential(p.device["key"], item), headers=p.device_headers())
    assert r.status_code == 201, r.json
    return r.json["id"]


def buy(client: Any, buyer: Party, listing_id: str, channel_id: str) -> dict[str, Any]:
    body = {"listing_id": listing_id, "channel_id": channel_id,
            "buyer_jkt": jwk_thumbprint(SigningKey.generate().verify_key)}
    r = client.simulate_post("/v1/purchases", json=body,
                             headers={**auth(buyer.session), "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 201, r.json
    return r.json


def publish_compute(client: Any, p: Party, title: str) -> str:
    item = listing(title, price_minor=7, kind="pipeline", metering_unit="calls", framework="python")
    r = client.simulate_post("/v1/listings", json=publish_credential(p.device["key"], item), headers=p.device_headers())
    assert r.status_code == 201, r.json
    return r.json["id"]


def invoke(client: Any, buyer: Party, listing_id: str, channel_id: str) -> dict[str, Any]:
    r = client.simulate_post("/v1/invocations", json=_invocation_body(listing_id, channel_id),
                             headers={**auth(buyer.session), "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 201, r.json
    return r.json


def _invocation_body(listing_id: str, channel_id: str) -> dict[str, Any]:
    return {"listing_id": listing_id, "channel_id": channel_id, "budget_minor": 70,
            "buyer_jkt": jwk_thumbprint(SigningKey.generate().verify_key)}


def mint(client: Any, p: Party, path: str, name: str) -> dict[str, Any]:
    r = client.simulate_post(path, json={"name": name}, headers=auth(p.session))
    assert r.status_code == 201, r.json
    return r.json


def build_world(client: Any, runtime: Any, stub: Any) -> World:
    owner = party(client, ["buyer", "seller"], device="owner-node-q7")
    vendor = party(client, ["buyer", "seller"], device="vendor-node")
    parties = {"other_buyer": party(client, ["buyer"]), "other_seller": party(client, ["seller"]),
               "other_device": party(client, ["seller", "buyer"], device="stranger-node")}
    auditor = register(client, roles=["buyer"])
    runtime.market.identity.grant_role(META, auditor["email"], "auditor")
    parties["auditor"] = Party(auditor, login(client, auditor["email"]))
    world = World(client, runtime, stub, owner, parties, vendor)
    o = world.objects
    headers = {"headers": auth(owner.session)}
    o["channel"] = open_card_channel(client, stub, {**owner.account, **headers}, 100_000)[0]
    o["vendor_channel"] = open_card_channel(client, stub, {**vendor.account, "headers": auth(vendor.session)},
                                            100_000)[0]
    o["listing"] = publish(client, owner, "owner's admissions")
    o["listing_to_delist"] = publish(client, owner, "owner's old admissions")
    o["vendor_listing"] = publish(client, vendor, "vendor's weather")
    o["vendor_compute"] = publish_compute(client, vendor, "vendor's embedder")
    bought = buy(client, owner, o["vendor_listing"], o["channel"])
    o["purchase"], o["delivery_token"] = bought["id"], bought["delivery_token"]
    o["sold"] = buy(client, vendor, o["listing"], o["vendor_channel"])["id"]
    opened = invoke(client, owner, o["vendor_compute"], o["channel"])
    o["invocation"], o["invoke_token"] = opened["id"], opened["invoke_token"]
    r = client.simulate_post(f"/v1/channels/{o['vendor_channel']}/debits",
                             json={"amount_minor": 300, "seller_account_id": owner.id},
                             headers={**auth(vendor.session), "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 201, r.json
    key, spare_key = mint(client, owner, "/v1/api-keys", "owner key"), mint(client, owner, "/v1/api-keys", "spare")
    agent, spare_agent = (mint(client, owner, "/v1/oauth/clients", "owner agent"),
                          mint(client, owner, "/v1/oauth/clients", "spare agent"))
    o.update(api_key=key["id"], spare_key=spare_key["id"], oauth_client=agent["id"], oauth_secret=agent["secret"],
             spare_client=spare_agent["id"], wallet=Account.create(), payout="acct_OwnerPayout77")
    r = client.simulate_post("/v1/me/wallet", json=_wallet(world, "owner").json, headers=auth(owner.session))
    assert r.status_code == 201, r.json  # binding the same wallet again is the owner's cell
    # an unpaid channel: its PaymentIntent is what a forged webhook would claim was paid
    r = client.simulate_post("/v1/channels", json={"rail": "card", "currency": "USD", "amount_minor": 5000},
                             headers={**auth(owner.session), "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 201, r.json
    o["unpaid_channel"], o["unpaid_intent"] = r.json["id"], r.json["payment"]["payment_intent_id"]
    o["node"] = SimNode(owner.device["id"], owner.device["key"])
    entry = o["node"].heartbeat()
    r = client.simulate_post("/v1/traces", json={"envelopes": [o["node"].envelope(entry)]},
                             headers=owner.device_headers())
    assert r.status_code == 200, r.json
    world.private |= {owner.account["email"], o["channel"], o["unpaid_channel"], o["purchase"], o["sold"],
                      key["id"], spare_key["id"], agent["id"], spare_agent["id"], o["payout"],
                      o["wallet"].address, o["wallet"].address.lower(), "owner-node-q7"}
    world.private |= {o["invocation"]}
    world.auditable |= {o["delivery_token"], o["invoke_token"]}  # each in its Opened/Purchased event
    world.secrets |= {o["delivery_token"], o["invoke_token"], key["secret"], spare_key["secret"], agent["secret"],
                      spare_agent["secret"], owner.session}
    world.owned |= {owner.id, owner.device["id"], o["channel"], o["unpaid_channel"], o["listing"],
                    o["listing_to_delist"], o["purchase"], o["sold"], o["invocation"]}
    return world


# -- what each route is sent, per actor ------------------------------------------------------------
@dataclass
class Request:
    path: str
    json: Any = None
    body: Any = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    owner_sees: str | None = None  # a value the owner's answer must carry (the cell is not vacuous)
    after: Callable[[Any], None] | None = None  # what an allowed owner's answer changes in the world


def _keyed(path: str, body: Any) -> Request:
    return Request(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})


def _me_or_other(w: World, actor: str) -> Party | None:
    return w.owner if actor == "owner" else w.parties.get(actor)


def _session_for(w: World, actor: str) -> Request:
    who = _me_or_other(w, actor) or w.vendor
    return Request("/v1/sessions", json={"email": who.account["email"], "password": PASSWORD})


def _oauth_token(w: World, actor: str) -> Request:
    secret = w.objects["oauth_secret"] if actor == "owner" else "guess-" + uuid.uuid4().hex
    return Request("/v1/oauth/token", body=f"grant_type=client_credentials&client_id={w.objects['oauth_client']}"
                   f"&client_secret={secret}", headers={"Content-Type": "application/x-www-form-urlencoded"})


def _forged_webhook(w: World, actor: str) -> Request:
    intent = w.stub.succeed_payment_intent(w.objects["unpaid_intent"])
    body = payment_intent_succeeded_event(intent)
    return Request("/v1/webhooks/stripe", body=body, headers={
        "Stripe-Signature": sign_webhook(body, "whsec_not_stripes"), "Content-Type": "application/json"})


def _enrollment(w: World, actor: str) -> Request:
    """A fresh challenge of the owner's, signed for the owner's account: the owner's to use."""
    challenge = w.client.simulate_post("/v1/devices/challenges", json={}, headers=auth(w.owner.session)).json
    key, kx = SigningKey.generate(), KxPrivateKey.generate()
    fields = enrollment_fields(challenge["challenge"], key, kx, "owner-node-2", "http://owner-node-2.example:9090")
    signature = b64url(key.sign(enrollment_message(account_id=w.owner.id, **fields)))
    return Request("/v1/devices", json={**fields, "signature": signature})


def _wallet(w: World, actor: str) -> Request:
    wallet = w.objects["wallet"]
    return Request("/v1/me/wallet", json={"address": wallet.address,
                                          "signature": wallet_signature(wallet, w.owner.id, HUB)})


def _payout(w: World, actor: str) -> Request:
    account = w.objects["payout"] if actor == "owner" else "acct_Stranger" + uuid.uuid4().hex[:8]
    return Request("/v1/me/payout-destination", json={"stripe_account": account})


def _purchase(w: World, actor: str) -> Request:
    return _keyed("/v1/purchases", {"listing_id": w.objects["vendor_listing"], "channel_id": w.objects["channel"],
                                    "buyer_jkt": jwk_thumbprint(SigningKey.generate().verify_key)})


def _signer(w: World, actor: str) -> SigningKey:
    return w.owner.device["key"] if actor == "owner" else w.parties["other_device"].device["key"]


def _publish(w: World, actor: str) -> Request:
    item = listing(f"owner's cohort {uuid.uuid4().hex[:6]}", price_minor=500)
    return Request("/v1/listings", json=publish_credential(w.owner.device["key"], item))


def _update(w: World, actor: str) -> Request:
    listing_id = w.objects["listing"]
    item = listing("owner's admissions", description="v2", price_minor=2500, delivery=delivery_of())
    return Request(f"/v1/listings/{listing_id}", json=update_credential(_signer(w, actor), listing_id, item))


def _delist(w: World, actor: str) -> Request:
    listing_id = w.objects["listing_to_delist"]
    return Request(f"/v1/listings/{listing_id}", json=delist_credential(_signer(w, actor), listing_id, "gone"))


def _trace(w: World, actor: str) -> Request:
    node = w.objects["node"]
    envelope = node.envelope(node.heartbeat())
    if actor != "owner":
        node.entries.pop()  # never recorded: the owner's next entry keeps its seq
    return Request("/v1/traces", json={"envelopes": [envelope]})


def _totp(w: World, actor: str) -> Request:
    def keep(r: Any) -> None:
        w.objects["totp"] = pyotp.TOTP(r.json["secret"])

    return Request("/v1/me/totp", json={}, after=keep)


def _totp_confirm(w: World, actor: str) -> Request:
    if "totp" not in w.objects:  # this cell run alone (-k): the owner begins two-factor set-up first
        _totp(w, actor).after(w.client.simulate_post("/v1/me/totp", json={}, headers=auth(w.owner.session)))
    return Request("/v1/me/totp/confirm", json={"code": w.objects["totp"].now()})


def _rotate(w: World, actor: str) -> Request:
    device = w.owner.device
    new, kx = SigningKey.generate(), KxPrivateKey.generate()

    def rotated(r: Any) -> None:
        device["key"] = new

    return Request(f"/v1/devices/{device['id']}/keys", json=rotation_body(_signer(w, actor), new, device["id"], kx),
                   after=rotated)


def _path(template: str, **extra: Any) -> Callable[[World, str], Request]:
    """A request to ``template`` with the owner's ids filled in (``{channel_id}``: its channel)."""
    def build(w: World, actor: str) -> Request:
        o = w.objects
        ids = {"channel_id": o["channel"], "purchase_id": o["purchase"], "listing_id": o["listing"],
               "device_id": w.owner.device["id"]}
        return Request(template.format(**ids), **extra)

    return build


def _fixed(path: str, **extra: Any) -> Callable[[World, str], Request]:
    return lambda w, actor: Request(path, **extra)


REQUESTS: dict[tuple[str, str], Callable[[World, str], Request]] = {
    ("GET", "/healthz"): _fixed("/healthz"),
    ("GET", "/readyz"): _fixed("/readyz"),
    ("GET", "/.well-known/ai-market.json"): _fixed("/.well-known/ai-market.json"),
    ("GET", "/openapi.json"): _fixed("/openapi.json"),
    ("GET", "/metrics"): _fixed("/metrics"),
    ("GET", "/v1/search"): _fixed("/v1/search", params={"q": "admissions"}),
    ("POST", "/v1/search"): _fixed("/v1/search", json={"q": "admissions"}),
    ("GET", "/v1/categories"): _fixed("/v1/categories"),
    ("GET", "/v1/listings/{listing_id}"): _path("/v1/listings/{listing_id}"),
    ("GET", "/v1/trust/{device_id}"): _path("/v1/trust/{device_id}"),
    ("GET", "/v1/audit/tree-heads"): _fixed("/v1/audit/tree-heads"),
    ("GET", "/v1/audit/consistency"): _fixed("/v1/audit/consistency", params={"first": "1", "second": "2"}),
    ("POST", "/v1/accounts"): lambda w, a: Request("/v1/accounts", json={
        "email": f"new-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD, "roles": ["buyer"]}),
    ("POST", "/v1/sessions"): _session_for,
    ("GET", "/v1/devices/{device_id}"): _path("/v1/devices/{device_id}", owner_sees="owner-node-q7"),
    ("POST", "/v1/webhooks/stripe"): _forged_webhook,
    ("POST", "/v1/oauth/token"): _oauth_token,
    ("GET", "/v1/me"): lambda w, a: Request("/v1/me", owner_sees=w.owner.account["email"]),
    ("GET", "/v1/api-keys"): lambda w, a: Request("/v1/api-keys", owner_sees=w.objects["api_key"]),
    ("GET", "/v1/oauth/clients"): lambda w, a: Request("/v1/oauth/clients", owner_sees=w.objects["oauth_client"]),
    ("POST", "/v1/api-keys"): _fixed("/v1/api-keys", json={"name": "another"}),
    ("POST", "/v1/oauth/clients"): _fixed("/v1/oauth/clients", json={"name": "another"}),
    ("GET", "/v1/devices"): _fixed("/v1/devices", owner_sees="owner-node-q7"),
    ("GET", "/v1/devices/me"): _fixed("/v1/devices/me", owner_sees="owner-node-q7"),
    ("POST", "/v1/devices/challenges"): _fixed("/v1/devices/challenges", json={}),
    ("POST", "/v1/devices"): _enrollment,
    ("GET", "/v1/me/wallet"): lambda w, a: Request("/v1/me/wallet", owner_sees=w.objects["wallet"].address),
    ("POST", "/v1/me/wallet"): _wallet,
    ("POST", "/v1/me/payout-destination"): _payout,
    ("GET", "/v1/balances"): _fixed("/v1/balances"),
    ("GET", "/v1/statements"): lambda w, a: Request("/v1/statements", owner_sees=w.objects["vendor_channel"]),
    ("GET", "/v1/audit"): lambda w, a: Request("/v1/audit", params={"limit": "100"}),
    ("GET", "/v1/audit/events"): _fixed("/v1/audit/events", params={"limit": "1000"}),
    ("GET", "/v1/channels"): lambda w, a: Request("/v1/channels", owner_sees=w.objects["channel"]),
    ("GET", "/v1/channels/{channel_id}"): _path("/v1/channels/{channel_id}"),
    ("POST", "/v1/channels"): lambda w, a: _keyed("/v1/channels", {"rail": "card", "currency": "USD",
                                                                   "amount_minor": 1000}),
    ("POST", "/v1/channels/{channel_id}/top-ups"): lambda w, a: _keyed(
        f"/v1/channels/{w.objects['channel']}/top-ups", {"amount_minor": 500}),
    ("POST", "/v1/channels/{channel_id}/debits"): lambda w, a: _keyed(
        f"/v1/channels/{w.objects['channel']}/debits", {"amount_minor": 100, "seller_account_id": w.vendor.id}),
    ("POST", "/v1/purchases"): _purchase,
    ("POST", "/v1/invocations"): lambda w, a: _keyed("/v1/invocations", _invocation_body(
        w.objects["vendor_compute"], w.objects["channel"])),
    ("GET", "/v1/invocations/{invocation_id}"): lambda w, a: Request(
        f"/v1/invocations/{w.objects['invocation']}", owner_sees=w.objects["invoke_token"]),
    ("GET", "/v1/purchases"): lambda w, a: Request("/v1/purchases", owner_sees=w.objects["purchase"]),
    ("GET", "/v1/purchases/{purchase_id}"): lambda w, a: Request(f"/v1/purchases/{w.objects['purchase']}",
                                                                 owner_sees=w.objects["delivery_token"]),
    ("GET", "/v1/transactions/{transaction_id}/trace"): lambda w, a: Request(
        f"/v1/transactions/{w.objects['purchase']}/trace", owner_sees=w.objects["purchase"]),
    ("GET", "/v1/stats/live"): lambda w, a: Request("/v1/stats/live", params={"after": "0"},
                                                    owner_sees=w.objects["purchase"]),
    ("POST", "/v1/listings"): _publish,
    ("PUT", "/v1/listings/{listing_id}"): _update,
    ("POST", "/v1/traces"): _trace,
    ("POST", "/v1/me/totp"): _totp,
    ("POST", "/v1/me/totp/confirm"): _totp_confirm,
    ("POST", "/v1/purchases/{purchase_id}/revoke"): lambda w, a: Request(
        f"/v1/purchases/{w.objects['sold']}/revoke", json={"reason": "cannot deliver"}),
    ("DELETE", "/v1/api-keys/{credential_id}"): lambda w, a: Request(f"/v1/api-keys/{w.objects['spare_key']}"),
    ("DELETE", "/v1/oauth/clients/{credential_id}"): lambda w, a: Request(
        f"/v1/oauth/clients/{w.objects['spare_client']}"),
    ("DELETE", "/v1/listings/{listing_id}"): _delist,
    ("POST", "/v1/devices/{device_id}/keys"): _rotate,
    ("POST", "/v1/channels/{channel_id}/close"): lambda w, a: Request(
        f"/v1/channels/{w.objects['channel']}/close", json={}),
}
