"""``GET /v1/trust/{device_id}``: a seller device's trust score, its breakdown and its sources.

Public, like the score search already shows on every listing: anyone deciding whether to buy
may check why a device scores what it does (``docs/trust.md``). Buyers are not named: each
purchase in the breakdown shows its buyer as ``buyer-1``, ``buyer-2``... (numbered within
this answer), so the route does not reveal who bought from whom. The score is the trust
projection's, taken at the latest event time it has processed (``as_of_ms``), never at the
time of the request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import falcon

from api.openapi import op, open_obj
from domain.model.errors import NotFound
from domain.model.ids import parse_uuid
from projections.trust import trust_of

if TYPE_CHECKING:
    from domain.model.ports import ViewDB

NUMBER = {"type": "number", "minimum": 0, "maximum": 1}
TRUST = {**open_obj(kind={"type": "string"}, id={"type": "string"}, account_id={"type": "string"}, score=NUMBER,
                    account_score={"type": ["number", "null"]}, as_of_ms={"type": "integer"},
                    window_ms={"type": "integer"}, components={"type": "object"},
                    sources={"type": "array", "items": {"type": "string"}}, position={"type": "integer"}),
         "required": ["id", "score", "as_of_ms", "components", "sources"]}
ROUTE = ("GET", "/v1/trust/{device_id}")  # api/authz.py: anyone, with or without a credential


def public_view(score: dict[str, Any]) -> dict[str, Any]:
    """The stored breakdown with buyers numbered instead of named."""
    numbers: dict[str, str] = {}
    purchases = []
    for item in score["components"]["delivery"].get("purchases", []):
        buyer = numbers.setdefault(item["buyer_account_id"], f"buyer-{len(numbers) + 1}")
        purchases.append({**item, "buyer_account_id": buyer})
    score["components"]["delivery"]["purchases"] = purchases
    return score


class Trust:
    openapi = {"get": op("A device's 30-day trust score with its breakdown and the events it came from "
                         "(anyone; buyers are numbered, not named)", "trust", responses={"200": TRUST})}

    def __init__(self, views: ViewDB) -> None:
        self.views = views

    def on_get(self, req: falcon.Request, resp: falcon.Response, device_id: str) -> None:
        device = str(parse_uuid(device_id, param="device_id"))
        score = trust_of(self.views, "device", device)
        if score is None:
            raise NotFound("no trust score for this device: it is not enrolled (or not yet projected)")
        account = trust_of(self.views, "account", score["account_id"])
        resp.media = {**public_view(score), "account_score": None if account is None else account["score"]}
