"""Health, readiness, the OpenAPI document and the federation discovery document."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import falcon

from api.openapi import op, open_obj
from domain.model.errors import Unavailable
from domain.model.keys import KxPublicKey, VerifyKey
from projections.health import read_health

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.ports import ViewDB

PROTOCOL_VERSION = "1.0"
API_VERSION = "0.1.0"


class Health:
    openapi = {"get": op("Liveness: the process answers", "system",
                         responses={"200": open_obj(status={"type": "string"})})}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class ProjectionStalled(Unavailable):
    """Raised by ``/readyz`` when a projection fails, hangs or has no runner (``projections.health``)."""

    code = "projection_stalled"
    title = "A projection is stalled"


class Ready:
    """Not ready (503) when the event store or the read models do not answer (``unavailable``),
    or when a projection is stalled (``projection_stalled``: each one named with its state,
    tracked position, the head, and for a failing handler the event position and error type;
    the message itself is in ``aimarket projections status``)."""

    openapi = {"get": op("Readiness: the event store and read models answer, no projection is stalled", "system",
                         responses={"200": open_obj(status={"type": "string"}, store={"type": "string"},
                                                    head_position={"type": "integer"},
                                                    projections={"type": "object"})})}

    def __init__(self, market: Marketplace, views: ViewDB, store: str, *, stall_after_s: float | None = None) -> None:
        self.market = market
        self.views = views
        self.store = store
        self.stall_after_s = stall_after_s  # None: projections.health.STALL_AFTER_S

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            head = self.market.recorder.max_notification_id() or 0
            self.views.fetchone("SELECT 1 AS ok")
            states = read_health(self.views, head, stall_after_s=self.stall_after_s)
        except Exception as exc:  # noqa: BLE001 - any failure here means "not ready"
            raise Unavailable(f"store not reachable: {type(exc).__name__}") from None
        stalled = [h for h in states if h.stalled]
        if stalled:
            raise ProjectionStalled("; ".join(h.detail for h in stalled), head_position=head, projections=[
                {"name": h.name, "state": h.state, "position": h.position, "head": h.head,
                 "event_position": h.failure.event_position if h.failure and h.failure.failing else None,
                 "error_type": h.failure.error_type if h.failure and h.failure.failing else None}
                for h in stalled])
        resp.media = {"status": "ready", "store": self.store, "head_position": head,
                      "projections": {h.name: {"position": h.position, "lag": h.lag, "state": h.state}
                                      for h in states}}


class OpenApiDoc:
    openapi = {"get": op("This OpenAPI 3.1 document", "system", responses={"200": {"type": "object"}})}

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.spec


class Discovery:
    """``/.well-known/ai-market.json``: how peers and nodes find and verify this hub."""

    openapi = {"get": op("Hub discovery document (protocol version, keys, base paths)", "federation",
                         responses={"200": open_obj(
                             protocol_versions={"type": "array"}, hub_name={"type": "string"},
                             hub_url={"type": "string"}, signing_key={"type": "object"},
                             key_exchange_key={"type": "object"}, api={"type": "object"})})}

    def __init__(self, market: Marketplace, hub_name: str, hub_url: str) -> None:
        self.market = market
        self.hub_name = hub_name
        self.hub_url = hub_url

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        market = self.market
        keyring = market.keyring()
        signing_kid, kx_kid = keyring.current("signing"), keyring.current("kx")
        signing = VerifyKey.from_bytes(bytes(market.secrets.signing_key(signing_kid).verify_key))
        kx = KxPublicKey.from_bytes(bytes(market.secrets.kx_key(kx_kid).public_key))
        resp.media = {
            "protocol_versions": [PROTOCOL_VERSION],
            "hub_version": API_VERSION,
            "hub_name": self.hub_name,
            "hub_url": self.hub_url,
            "signing_key": {"kid": signing_kid, "alg": "Ed25519", "public_key": signing.to_multibase(),
                            "did": signing.did_key},
            "key_exchange_key": {"kid": kx_kid, "alg": "X25519", "public_key": kx.to_multibase()},
            "api": {"base_path": "/v1", "openapi": "/openapi.json", "accounts": "/v1/accounts",
                    "sessions": "/v1/sessions", "devices": "/v1/devices", "oauth_token": "/v1/oauth/token",
                    "listings": "/v1/listings", "purchases": "/v1/purchases", "invocations": "/v1/invocations",
                    "traces": "/v1/traces",
                    # what a third party needs to check the log with only this document's key
                    "audit_tree_heads": "/v1/audit/tree-heads", "trust": "/v1/trust/{device_id}"},
            "fees": {"marketplace_fee_bps": 500},
        }
        resp.cache_control = ["public", "max-age=60"]
