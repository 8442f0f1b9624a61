"""The audit log for auditors: every event with actor, correlation and causation ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon

from api.http import query_int
from api.openapi import op, open_obj, query_param
from projections.audit_log import list_events

if TYPE_CHECKING:
    from domain.model.ports import ViewDB


class AuditEvents:
    openapi = {"get": op("Events in log order (auditor or admin)", "audit", auth="account",
                         params=[query_param("after", {"type": "integer", "minimum": 0}),
                                 query_param("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                                 query_param("correlation_id", {"type": "string", "maxLength": 100}),
                                 query_param("originator_id", {"type": "string", "maxLength": 100})],
                         responses={"200": open_obj(items={"type": "array"}, next_after={"type": "integer"})})}

    def __init__(self, views: ViewDB) -> None:
        self.views = views

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        after = query_int(req, "after", 0, 0, 2**62)
        items = list_events(self.views, after=after, limit=query_int(req, "limit", 100, 1, 1000),
                            correlation_id=req.get_param("correlation_id"),
                            originator_id=req.get_param("originator_id"))
        resp.media = {"items": items, "next_after": items[-1]["position"] if items else after}
