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
from domain.model.ids import parse_uuid
from domain.model.trust import Facts, score
from projections.trust import trust_of

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.ports import ViewDB

NUMBER = {"type": "number", "minimum": 0, "maximum": 1}
TRUST = {**open_obj(kind={"type": "string"}, id={"type": "string"}, account_id={"type": "string"}, score=NUMBER,
                    account_score={"type": ["number", "null"]}, as_of_ms={"type": "integer"},
                    window_ms={"type": "integer"}, components={"type": "object"},
                    sources={"type": "array", "items": {"type": "string"}}, position={"type": "integer"},
                    scored={"type": "boolean"}),
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

    def __init__(self, market: Marketplace, views: ViewDB) -> None:
        self.market = market
        self.views = views

    def on_get(self, req: falcon.Request, resp: falcon.Response, device_id: str) -> None:
        device = str(parse_uuid(device_id, param="device_id"))
        stored = trust_of(self.views, "device", device)
        if stored is None:
            stored = self._prior(device)
        account = trust_of(self.views, "account", stored["account_id"])
        resp.media = {**public_view(stored), "account_score": None if account is None else account["score"]}

    def _prior(self, device_id: str) -> dict[str, Any]:
        """An enrolled device not scored yet: the prior at the projection's clock (NotFound
        for a device that is not enrolled)."""
        account_id = self.market.devices.device(device_id).account_id
        clock = self.views.fetchone("SELECT now_ms FROM trust_clock WHERE id = 1")
        as_of_ms = int(clock["now_ms"]) if clock else 0
        return {"kind": "device", "id": device_id, "account_id": account_id, "scored": False,
                **score(Facts(account_id, {}, {}), as_of_ms)}
