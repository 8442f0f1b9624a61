"""Device enrollment (challenge + proof of possession), device identity and key rotation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon

from api.http import meta, principal, read_json
from api.openapi import obj, op, open_obj
from domain.model.errors import NotFound
from projections.devices import devices_of

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.ports import ViewDB

MULTIBASE = {"type": "string", "minLength": 10, "maxLength": 128, "pattern": "^z[1-9A-HJ-NP-Za-km-z]+$"}
SIGNATURE = {"type": "string", "minLength": 16, "maxLength": 256, "pattern": "^[A-Za-z0-9_-]+$"}
DEVICE = open_obj(id={"type": "string"}, account_id={"type": "string"}, name={"type": "string"},
                  endpoint={"type": "string"}, kid={"type": "string"}, public_key={"type": "string"},
                  kx_public_key={"type": "string"}, suspended={"type": "boolean"}, keys={"type": "array"})
ENROLL = obj(["challenge", "name", "public_key", "kx_public_key", "endpoint", "signature"],
             challenge={"type": "string", "minLength": 10, "maxLength": 4096},
             name={"type": "string", "minLength": 1, "maxLength": 64},
             public_key=MULTIBASE, kx_public_key=MULTIBASE,
             endpoint={"type": "string", "minLength": 8, "maxLength": 2048}, signature=SIGNATURE)
ROTATE = obj(["public_key", "kx_public_key", "signature"], public_key=MULTIBASE, kx_public_key=MULTIBASE,
             signature=SIGNATURE)


class Challenges:
    openapi = {"post": op("Get an enrollment challenge (seller's API key)", "devices", auth="account",
                          responses={"201": open_obj(challenge={"type": "string"}, expires_in={"type": "integer"})})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req, "api_key", "session")
        who.require_role("seller")
        resp.media = self.market.devices.device_challenge(who.account_id)
        resp.status = falcon.HTTP_201


class Devices:
    openapi = {
        "post": op("Enroll a node: its keys, signed over the challenge with the device key", "devices",
                   auth="account", body=ENROLL, responses={"201": DEVICE}),
        "get": op("Your enrolled devices", "devices", auth="account",
                  responses={"200": open_obj(items={"type": "array"})}),
    }

    def __init__(self, market: Marketplace, views: ViewDB) -> None:
        self.market = market
        self.views = views

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req, "api_key", "session")
        who.require_role("seller")
        body = read_json(req, ENROLL)
        resp.media = self.market.devices.enroll_device(meta(req, who), who.account_id, **body)
        resp.status = falcon.HTTP_201

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req, "api_key", "session", "oauth_client")
        resp.media = {"items": devices_of(self.views, who.account_id)}


class DeviceSelf:
    openapi = {"get": op("The device this device token belongs to (a signed-request check)", "devices",
                         auth="device", responses={"200": DEVICE})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req, "device")
        resp.media = self.market.devices.device(who.device_id).to_public()


class Device:
    openapi = {"get": op("One device (its owner, or any caller for the public keys)", "devices", auth="any",
                         responses={"200": DEVICE})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_get(self, req: falcon.Request, resp: falcon.Response, device_id: str) -> None:
        principal(req)
        device = self.market.devices.device(device_id)
        resp.media = device.to_public()


class DeviceKeys:
    openapi = {"post": op("Rotate the device key: new key signed by the current one; the old one "
                          "is honoured for 24 hours", "devices", auth="device", body=ROTATE,
                          responses={"201": DEVICE})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response, device_id: str) -> None:
        who = principal(req, "device")
        body = read_json(req, ROTATE)
        if who.device_id != device_id:
            raise NotFound("device not found")
        resp.media = self.market.devices.rotate_device_key(meta(req, who), who, device_id, **body)
        resp.status = falcon.HTTP_201
