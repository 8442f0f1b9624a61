"""Device enrollment (challenge + proof of possession), device identity and key rotation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon

from api.http import meta, principal, read_json
from api.openapi import obj, op, open_obj
from domain.app.devices import ENDPOINT_CHARS_MAX, ENDPOINT_PATTERN, NAME_PATTERN
from domain.model.errors import NotFound
from projections.devices import devices_of

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.ports import ViewDB

_B58 = "[1-9A-HJ-NP-Za-km-z]"
ED25519_KEY = {"type": "string", "pattern": f"^z6Mk{_B58}{{44}}$",
               "description": "Ed25519 public key: multibase base58btc, multicodec ed25519-pub (0xed01)."}
X25519_KEY = {"type": "string", "pattern": f"^z6LS{_B58}{{44}}$",
              "description": "X25519 public key: multibase base58btc, multicodec x25519-pub (0xec01)."}
SIGNATURE = {"type": "string", "minLength": 16, "maxLength": 256, "pattern": "^[A-Za-z0-9_-]+$"}
KEY = open_obj(kid={"type": "string"}, public_key={"type": "string"}, kx_public_key={"type": "string"},
               valid_until_s={"type": ["integer", "null"]})
_PUBLIC_FIELDS = {"id": {"type": "string"}, "status": {"enum": ["active", "suspended"]}, "kid": {"type": "string"},
                  "public_key": {"type": "string"}, "kx_public_key": {"type": "string"},
                  "keys": {"type": "array", "items": KEY}}
DEVICE_PUBLIC = {**open_obj(**_PUBLIC_FIELDS), "required": list(_PUBLIC_FIELDS),
                 "description": "What anyone sees: id, status, current key ids and public keys, every key "
                                "with its validity. The owner view adds account_id, name, endpoint, suspended."}
DEVICE = {**open_obj(**_PUBLIC_FIELDS, account_id={"type": "string"}, name={"type": "string"},
                     endpoint={"type": "string"}, suspended={"type": "boolean"}),
          "required": [*_PUBLIC_FIELDS, "account_id", "name", "endpoint", "suspended"]}
ENDPOINT = {"type": "string", "maxLength": ENDPOINT_CHARS_MAX, "pattern": ENDPOINT_PATTERN,
            "description": "http(s) URL of the node: a DNS name, IPv4 address or [IPv6] literal, an optional "
                           "port 1..65535 and path; no user info, query or fragment."}
ENROLL = obj(["challenge", "name", "public_key", "kx_public_key", "endpoint", "signature"],
             challenge={"type": "string", "minLength": 10, "maxLength": 4096},
             name={"type": "string", "pattern": NAME_PATTERN},
             public_key=ED25519_KEY, kx_public_key=X25519_KEY, endpoint=ENDPOINT, signature=SIGNATURE)
ROTATE = obj(["public_key", "kx_public_key", "signature"], public_key=ED25519_KEY, kx_public_key=X25519_KEY,
             signature=SIGNATURE)


class Challenges:
    openapi = {"post": op("Get an enrollment challenge (seller's API key or session)", "devices", auth="account",
                          responses={"201": open_obj(challenge={"type": "string"}, expires_in={"type": "integer"})})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        resp.media = self.market.devices.device_challenge(who.account_id)
        resp.status = falcon.HTTP_201


class Devices:
    openapi = {
        "post": op("Enroll a node: its keys, signed over the challenge with the device key", "devices",
                   auth="account", body=ENROLL, responses={"201": DEVICE}),
        "get": op("Your enrolled devices (session or API key)", "devices", auth="account",
                  responses={"200": open_obj(items={"type": "array"})}),
    }

    def __init__(self, market: Marketplace, views: ViewDB) -> None:
        self.market = market
        self.views = views

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        body = read_json(req, ENROLL)
        resp.media = self.market.devices.enroll_device(meta(req, who), who.account_id, **body)
        resp.status = falcon.HTTP_201

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        resp.media = {"items": devices_of(self.views, who.account_id)}


class DeviceSelf:
    openapi = {"get": op("The device this device token belongs to (a signed-request check)", "devices",
                         auth="device", responses={"200": DEVICE})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        resp.media = self.market.devices.device(who.device_id).owner_view()


class Device:
    openapi = {"get": op("One device: its public keys for anyone (no credential needed); the owner view for "
                         "its account's session or API key, or the device itself", "devices",
                         responses={"200": DEVICE_PUBLIC})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_get(self, req: falcon.Request, resp: falcon.Response, device_id: str) -> None:
        who = getattr(req.context, "principal", None)  # set by api.authz when a credential was sent
        resp.media = self.market.devices.device_view(device_id, who)


class DeviceKeys:
    openapi = {"post": op("Rotate the device key: new key signed by the current one; the old one "
                          "is honoured for 24 hours", "devices", auth="device", body=ROTATE,
                          responses={"201": DEVICE})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response, device_id: str) -> None:
        who = principal(req)
        body = read_json(req, ROTATE)
        if who.device_id != device_id:
            raise NotFound("device not found")
        resp.media = self.market.devices.rotate_device_key(meta(req, who), who, device_id, **body)
        resp.status = falcon.HTTP_201
