"""Purchases over HTTP: buy a listing from a channel, list and read purchases, revoke a token.

``POST /v1/purchases`` runs on the event loop like the debit route (``api.resources.money``):
the purchase is a batch item of the debit batcher (``domain.app.debit_batcher``), so it is
paid and recorded, with its delivery token, in the batch's one transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import falcon

from api.http import meta, principal, principal_async, query_int, read_body, read_json
from api.openapi import obj, op, open_obj, query_param
from api.resources.money import HEX_SIG, IDEMPOTENCY, UUID_STR, _debit_response, _idempotency_key
from domain.model.errors import InvalidInput
from domain.model.purchase import STATUSES
from projections.purchases import purchases_page

if TYPE_CHECKING:
    from domain.app.debit_batcher import DebitBatcher
    from domain.app.marketplace import Marketplace
    from domain.model.ports import ViewDB

JKT = {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$",
       "description": "RFC 7638 thumbprint of the buyer node's per-purchase Ed25519 key (`aim-node purchase-key`)"}
BUY = obj(["listing_id", "channel_id", "buyer_jkt"], listing_id=UUID_STR, channel_id=UUID_STR, buyer_jkt=JKT,
          voucher=obj(["cumulative_minor", "signature"], cumulative_minor={"type": "integer", "minimum": 1},
                      signature=HEX_SIG))
TOKEN = open_obj(jti={"type": "string"}, kid={"type": "string"}, issued_at_s={"type": "integer"},
                 start_by_s={"type": "integer"}, expires_at_s={"type": "integer"},
                 redeemed_at_ms={"type": ["integer", "null"]}, expired_at_s={"type": ["integer", "null"]},
                 revoked_at_s={"type": ["integer", "null"]})
PURCHASE = open_obj(id={"type": "string"}, status={"type": "string", "enum": list(STATUSES)},
                    listing_id={"type": "string"}, listing_version={"type": "integer"},
                    price_minor={"type": "integer"}, fee_minor={"type": "integer"}, currency={"type": "string"},
                    token=TOKEN, delivery_token={"type": "string", "description": "the buyer only"})
PAGE = open_obj(items={"type": "array"}, next_cursor={"type": ["string", "null"]})
LIST_PARAMS = [
    query_param("role", {"type": "string", "enum": ["buyer", "seller"]},
                "only purchases you made (buyer) or sold (seller); default both (auditors: everyone's)"),
    query_param("status", {"type": "string", "enum": list(STATUSES)}),
    query_param("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
    query_param("cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "next_cursor of the previous page"),
]
REVOKE = obj([], reason={"type": "string", "maxLength": 200})
LIST_NAMES = frozenset(p["name"] for p in LIST_PARAMS)


def _only_params(req: falcon.Request, names: frozenset[str]) -> None:
    """Refuse a query parameter the operation does not document (a typo would otherwise be
    silently ignored: ``stauts=issued`` would list everything)."""
    for name, _ in parse_qsl(req.query_string, keep_blank_values=True):
        if name not in names:
            raise InvalidInput(f"unknown query parameter {name!r}" if name.isprintable() and len(name) <= 40
                               else "unknown query parameter", param=name[:40] or "query")


class Purchases:
    openapi = {
        "post": op("Buy a listing: the channel pays its current price (402 channel_exhausted when it cannot); "
                   "the answer carries the delivery token for the buyer's node", "purchases", auth="account",
                   body=BUY, params=[IDEMPOTENCY], responses={"201": PURCHASE, "402": None}),
        "get": op("Your purchases, as buyer or seller, newest first (auditors and admins: everyone's)", "purchases",
                  auth="account", params=LIST_PARAMS, responses={"200": PAGE},
                  description="A query parameter not listed here is refused (422 invalid_input)."),
    }

    def __init__(self, batcher: DebitBatcher, views: ViewDB) -> None:
        self.batcher = batcher
        self.views = views

    # On the loop, as debits: caches warm, no I/O until the batch's shared commit.
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        await read_body(req)
        body = read_json(req, BUY)
        who = await principal_async(req)
        key = _idempotency_key(req)
        result = await self.batcher.submit_purchase(meta(req, who), who.account_id, key, body)
        _debit_response(resp, result)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        _only_params(req, LIST_NAMES)
        role, status, cursor = req.get_param("role"), req.get_param("status"), req.get_param("cursor")
        if role not in (None, "buyer", "seller"):
            raise InvalidInput("role must be buyer or seller", param="role")
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", param="status")
        if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
            raise InvalidInput("cursor must be the next_cursor of a previous page", param="cursor")
        everyone = role is None and bool({"auditor", "admin"} & set(who.roles))
        items, next_cursor = purchases_page(
            self.views, account_id=None if everyone else who.account_id, role=role, status=status,
            limit=query_int(req, "limit", 50, 1, 200), before=int(cursor) if cursor is not None else None)
        resp.media = {"items": items, "next_cursor": next_cursor}


class Purchase:
    openapi = {"get": op("One purchase: price, fee, the token's lifecycle, receipts and confirmations (its buyer, "
                         "its seller, auditors; the token itself only for the buyer)", "purchases", auth="account",
                         responses={"200": PURCHASE})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_get(self, req: falcon.Request, resp: falcon.Response, purchase_id: str) -> None:
        who = principal(req)
        _only_params(req, frozenset())
        resp.media = self.market.purchases.view(who.account_id, who.roles, purchase_id)


class Revoke:
    openapi = {"post": op("Revoke a delivery token nobody redeemed yet (its seller or an admin)", "purchases",
                          auth="account", body=REVOKE, responses={"200": PURCHASE})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response, purchase_id: str) -> None:
        who = principal(req)
        body = read_json(req, REVOKE)
        resp.media = self.market.purchases.revoke_token(meta(req, who), who.account_id, who.roles, purchase_id,
                                                        reason=body.get("reason", ""))
