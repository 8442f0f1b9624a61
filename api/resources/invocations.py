"""Invocations over HTTP: open a metered compute session (a hold on the channel and an invoke
token for the seller's node), read it.

``POST /v1/invocations`` places the hold and records the invocation in one save
(``domain.app.invocations``); it answers 201 for a new session and 200 (``Idempotent-Replayed:
true``) for a retry under the same Idempotency-Key, with the same token. Nothing per call
comes to the hub: the node reports the binding and the final receipt through its outbox.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon

from api.http import meta, principal, read_json
from api.openapi import obj, op, open_obj
from api.resources.money import IDEMPOTENCY, UUID_STR, _idempotency_key
from api.resources.purchases import JKT, _only_params
from domain.model.invocation import STATUSES
from domain.model.invoke import MAX_AMOUNT_MINOR, MAX_CONCURRENCY

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace

OPEN = obj(["listing_id", "channel_id", "budget_minor", "buyer_jkt"], listing_id=UUID_STR, channel_id=UUID_STR,
           budget_minor={"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT_MINOR,
                         "description": "the hold: the most the session may bill, minor units of the channel"},
           buyer_jkt={**JKT, "description": "RFC 7638 thumbprint of the buyer's Ed25519 key (the token's cnf)"},
           max_concurrency={"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENCY,
                            "description": "calls that may run at once (default 1)"},
           listing_version={"type": "integer", "minimum": 1, "maximum": 2**31,
                            "description": "refuse if the listing moved on"},
           max_call_units={"type": "integer", "minimum": 1, "maximum": 2**31,
                           "description": "the most units one call may count (the asset's max_units_per_call); "
                                          "required for rows and tokens"})
TOKEN = open_obj(jti={"type": "string"}, kid={"type": "string"}, issued_at_s={"type": "integer"},
                 start_by_s={"type": "integer"}, expires_at_s={"type": "integer"}, lapse_at_s={"type": "integer"},
                 bound_at_ms={"type": ["integer", "null"]})
INVOCATION = open_obj(id={"type": "string"}, status={"type": "string", "enum": list(STATUSES)},
                      listing_id={"type": "string"}, listing_version={"type": "integer"},
                      channel_id={"type": "string"}, unit={"type": "string"},
                      unit_price_minor={"type": "integer"}, currency={"type": "string"},
                      budget_minor={"type": "integer"}, captured_minor={"type": "integer"},
                      fee_minor={"type": "integer"}, released_minor={"type": "integer"}, token=TOKEN,
                      invoke_token={"type": "string", "description": "the buyer only"})


class Invocations:
    openapi = {
        "post": op("Open a metered compute session: hold budget_minor on the channel (402 channel_exhausted "
                   "with available_minor when it cannot) and get an invoke token for the seller's node",
                   "invocations", auth="account", body=OPEN, params=[IDEMPOTENCY],
                   responses={"201": INVOCATION, "200": INVOCATION, "402": None},
                   description="201 for a new session, 200 for a replay under the same Idempotency-Key "
                               "(the same token); another body under the key is 409 idempotency_key_reused."),
    }

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        body = read_json(req, OPEN)
        key = _idempotency_key(req)
        result = self.market.invocations.open(meta(req, who), who.account_id, idempotency_key=key, body=body)
        replayed = result.pop("replayed", False)
        resp.set_header("Idempotent-Replayed", "true" if replayed else "false")
        resp.media = result
        resp.status = falcon.HTTP_200 if replayed else falcon.HTTP_201


class Invocation:
    openapi = {"get": op("One invocation: its hold, token deadlines, binding and capture (its buyer, its seller, "
                         "auditors; the token itself only for the buyer)", "invocations", auth="account",
                         responses={"200": INVOCATION})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_get(self, req: falcon.Request, resp: falcon.Response, invocation_id: str) -> None:
        who = principal(req)
        _only_params(req, frozenset())
        resp.media = self.market.invocations.view(who.account_id, who.roles, invocation_id)
