"""The catalogue: device-signed listing credentials in, hybrid search and listing detail out.

Publishing, updating and delisting need a device token *and* a credential signed by that
same device (``domain.app.catalogue``). Search, categories and listing detail answer
anonymous callers too: agents browse before they have an account.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import falcon

from api.http import meta, principal, read_json
from api.openapi import op, open_obj, query_param
from domain.model.errors import InvalidInput, NotFound
from domain.model.ids import parse_uuid
from domain.model.listing_schema import DELIST_CREDENTIAL, PUBLISH_CREDENTIAL, UPDATE_CREDENTIAL
from domain.model.money import SCALES
from projections.search.query import LIMIT_MAX, Q_CHARS_MAX, category_counts, listing_detail, search

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.ports import ViewDB

LISTING = open_obj(id={"type": "string"}, status={"type": "string"}, title={"type": "string"},
                   kind={"type": "string"}, price_minor={"type": "integer"}, currency={"type": "string"},
                   device_id={"type": "string"}, account_id={"type": "string"}, version={"type": "integer"})
DELIVERY = {"type": ["object", "null"], "description": "the signed delivery commitment: object_hash (sha256 SRI of "
            "the delivered file), size_bytes, blocks ({alg, block_size, count, root}); null: not deliverable",
            "properties": {"object_hash": {"type": "string"}, "size_bytes": {"type": "integer"},
                           "blocks": {"type": "object"}}}
DETAIL = open_obj(id={"type": "string"}, status={"type": "string"}, title={"type": "string"},
                  version={"type": "integer"}, delivery=DELIVERY,
                  price=open_obj(price_minor={"type": "integer"}, currency={"type": "string"}),
                  schema_preview={"type": "array"}, quality={"type": "object"}, pii={"type": "object"},
                  seller=open_obj(device_id={"type": "string"}, trust_score={"type": "number"}))
RESULTS = open_obj(items={"type": "array"}, next_cursor={"type": ["string", "null"]}, count={"type": "integer"})
SLUG = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,39}$"}
MONEY = {"type": "integer", "minimum": 0, "maximum": 10**12}
SEARCH_FIELDS: dict[str, dict[str, Any]] = {
    "q": {"type": "string", "maxLength": Q_CHARS_MAX},
    "kind": {"type": "string", "enum": ["dataset", "model", "pipeline"]},
    "category": SLUG,
    "currency": {"type": "string", "enum": sorted(SCALES)},  # as projections.search checks it
    "licence": {"type": "string", "pattern": "^[A-Za-z0-9.+-]{1,64}$"},
    "price_min": MONEY, "price_max": MONEY,
    "quality_min": {"type": "integer", "minimum": 0, "maximum": 100},
    "pii_free": {"type": "boolean"},
    "trust_min": {"type": "number", "minimum": 0, "maximum": 1},
    "limit": {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX},
    "cursor": {"type": "string", "maxLength": 512},
}
SEARCH_BODY = {"type": "object", "properties": SEARCH_FIELDS, "additionalProperties": False}
SEARCH_DOC = ("Hybrid search: 0.7 · semantic cosine + 0.3 · lexical rank, boosted by quality and trust; "
              "filters narrow the candidates; pages follow next_cursor. Anonymous callers welcome.")


class Listings:
    openapi = {"post": op("Publish a listing: a ListingCredential (eddsa-jcs-2022) signed by this device",
                          "catalogue", auth="device", body=PUBLISH_CREDENTIAL, responses={"201": LISTING})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        body = read_json(req, PUBLISH_CREDENTIAL)
        resp.media = self.market.catalogue.publish_listing(meta(req, who), who, body)
        resp.status = falcon.HTTP_201


class Listing:
    openapi = {
        "get": op("One listing: schema preview, quality, PII summary, price, seller device and trust, its "
                  "version and delivery commitment",
                  "catalogue", responses={"200": DETAIL}),
        "put": op("Update a listing with a new signed ListingCredential (action update)", "catalogue",
                  auth="device", body=UPDATE_CREDENTIAL, responses={"200": LISTING}),
        "delete": op("Delist a listing with a signed DelistingCredential", "catalogue", auth="device",
                     body=DELIST_CREDENTIAL, responses={"200": LISTING}),
    }

    def __init__(self, market: Marketplace, views: ViewDB) -> None:
        self.market = market
        self.views = views

    def on_get(self, req: falcon.Request, resp: falcon.Response, listing_id: str) -> None:
        detail = listing_detail(self.views, str(parse_uuid(listing_id, param="listing_id")))
        if detail is None:
            raise NotFound("listing not found")
        resp.media = {**detail, **self.market.catalogue.delivery_of(listing_id)}  # what the token will carry

    def on_put(self, req: falcon.Request, resp: falcon.Response, listing_id: str) -> None:
        who = principal(req)
        body = read_json(req, UPDATE_CREDENTIAL)
        resp.media = self.market.catalogue.update_listing(meta(req, who), who, listing_id, body)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, listing_id: str) -> None:
        who = principal(req)
        body = read_json(req, DELIST_CREDENTIAL)
        resp.media = self.market.catalogue.delist_listing(meta(req, who), who, listing_id, body)


def _query_params(req: falcon.Request) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for name in SEARCH_FIELDS:
        value = req.get_param(name)
        if value is None:
            continue
        if name == "pii_free":
            if value not in ("true", "false"):
                raise InvalidInput("pii_free must be true or false", param="pii_free")
            raw[name] = value == "true"
        else:
            raw[name] = value
    return raw


class Search:
    openapi = {
        "get": op("Search listings (query string)", "catalogue", description=SEARCH_DOC,
                  params=[query_param(name, schema) for name, schema in SEARCH_FIELDS.items()],
                  responses={"200": RESULTS}),
        "post": op("Search listings (JSON body, for agents)", "catalogue", description=SEARCH_DOC,
                   body=SEARCH_BODY, responses={"200": RESULTS}),
    }

    def __init__(self, views: ViewDB) -> None:
        self.views = views

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = search(self.views, _query_params(req))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = search(self.views, read_json(req, SEARCH_BODY))


class Categories:
    openapi = {"get": op("Categories with their number of active listings (per kind too)", "catalogue",
                         params=[query_param("kind", SEARCH_FIELDS["kind"])],
                         responses={"200": open_obj(items={"type": "array"})})}

    def __init__(self, views: ViewDB) -> None:
        self.views = views

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"items": category_counts(self.views, req.get_param("kind"))}
