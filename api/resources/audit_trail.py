"""The audit trail over HTTP (docs/audit.md, "The audit tree"):

* ``GET /v1/audit``: the caller's own entries (events by the account or its devices, and the
  account's own stream), in log order, each a self-contained inclusion proof against the
  latest signed tree head; an auditor or admin sees every entry.
* ``GET /v1/audit/tree-heads``: the signed tree heads, and every key that signed them.
* ``GET /v1/audit/consistency?first=&second=``: the consistency proof between two heads.

Heads and consistency proofs are public (anyone may watch the log grow); entries are not.
Every proof verifies offline with ``aimarket audit check-proof FILE --hub-key z6Mk...``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import falcon

from api.http import principal, query_int
from api.openapi import op, open_obj, query_param
from domain.app.audit_trail import PAGE_MAX, AuditTrail
from domain.model.base import actor_for_account, actor_for_device
from domain.model.errors import InvalidInput
from projections.audit_tree import TreeStore
from projections.devices import devices_of

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.ports import ViewDB

POSITION_MAX = 2**53 - 1
HEAD = open_obj(origin={"type": "string"}, tree_size={"type": "integer"}, root_hash={"type": "string"},
                timestamp_ms={"type": "integer"}, kid={"type": "string"},
                note={"type": "string", "description": "the signed checkpoint (C2SP signed-note form): the source "
                                                       "of truth, the other fields are parsed from it"})
ENTRY = open_obj(position={"type": "integer"}, originator_id={"type": "string"},
                 originator_version={"type": "integer"}, topic={"type": "string"},
                 state={"type": "string", "description": "the event's stored bytes (the library's JSON) as text"},
                 state_b64={"type": "string"})
ITEM = {**open_obj(type={"type": "string"}, version={"type": "integer"}, position={"type": "integer"},
                   entry=ENTRY, leaf_index={"type": "integer"}, tree_size={"type": "integer"},
                   leaf_hash={"type": "string"}, proof={"type": ["array", "null"], "items": {"type": "string"}},
                   tree_head=HEAD),
        "description": "An inclusion proof (type aimarket.audit.inclusion_proof) against the latest signed head, "
                       "or an entry the latest head does not cover yet (aimarket.audit.pending_entry, proof null)."}


def _size_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": True, "description": description,
            "schema": {"type": "integer", "minimum": 1, "maximum": POSITION_MAX}}


class AuditEntries:
    openapi = {"get": op(
        "Your entries in the audit log, each with its inclusion proof (auditors and admins: every entry)", "audit",
        auth="account",
        params=[query_param("after", {"type": "integer", "minimum": 0, "maximum": POSITION_MAX},
                            "a log position: entries after it"),
                query_param("limit", {"type": "integer", "minimum": 1, "maximum": PAGE_MAX})],
        responses={"200": open_obj(tree_head={"oneOf": [HEAD, {"type": "null"}]},
                                   items={"type": "array", "items": ITEM}, next_after={"type": "integer"})})}

    def __init__(self, trail: AuditTrail, views: ViewDB) -> None:
        self.trail = trail
        self.views = views

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        after = query_int(req, "after", 0, 0, POSITION_MAX)
        limit = query_int(req, "limit", PAGE_MAX, 1, PAGE_MAX)
        if set(who.roles) & {"auditor", "admin"}:
            actors, originator = None, None
        else:
            devices = [actor_for_device(d["device_id"]) for d in devices_of(self.views, who.account_id)]
            actors, originator = [actor_for_account(who.account_id), *devices], who.account_id
        resp.media = self.trail.entries(actors=actors, originator_id=originator, after_position=after, limit=limit)


class TreeHeads:
    openapi = {"get": op(
        "Signed tree heads of the audit log, and the keys that signed them (public)", "audit",
        params=[query_param("after", {"type": "integer", "minimum": 0, "maximum": POSITION_MAX},
                            "a tree size: heads of larger trees"),
                query_param("limit", {"type": "integer", "minimum": 1, "maximum": 1000})],
        responses={"200": open_obj(origin={"type": "string"}, keys={"type": "object"},
                                   items={"type": "array", "items": HEAD}, next_after={"type": "integer"})})}

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        after = query_int(req, "after", 0, 0, POSITION_MAX)
        heads = self.trail.heads(after_size=after, limit=query_int(req, "limit", 100, 1, 1000))
        resp.media = {"origin": self.trail.origin, "keys": self.trail.key_document(),
                      "items": [h.as_dict() for h in heads],
                      "next_after": heads[-1].head.tree_size if heads else after}


class Consistency:
    openapi = {"get": op(
        "The consistency proof between two signed tree heads (public)", "audit",
        params=[_size_param("first", "the size of a signed tree head"),
                _size_param("second", "the size of another signed tree head")],
        responses={"200": open_obj(type={"type": "string"}, version={"type": "integer"}, first=HEAD, second=HEAD,
                                   proof={"type": "array", "items": {"type": "string"}})})}

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        for name in ("first", "second"):
            if req.get_param(name) is None:
                raise InvalidInput(f"{name} (the size of a signed tree head) is required", param=name)
        first = query_int(req, "first", 1, 1, POSITION_MAX)
        second = query_int(req, "second", 1, 1, POSITION_MAX)
        resp.media = self.trail.consistency(first, second)


def routes(market: Marketplace, views: ViewDB) -> list[tuple[str, object]]:
    """The audit trail's routes, built over one service (``api.app`` adds them to its table)."""
    trail = AuditTrail(market, TreeStore(views))
    return [("/v1/audit", AuditEntries(trail, views)), ("/v1/audit/tree-heads", TreeHeads(trail)),
            ("/v1/audit/consistency", Consistency(trail))]
