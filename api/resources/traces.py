"""``POST /v1/traces``: a node reports its outbox entries, each in a device-signed envelope.

The body is ``{"envelopes": [...]}`` (1..32, in the order of their ``seq``); each envelope is
checked in full by ``domain.app.traces`` (closed structure, signature, nonce, skew, chain), so
its own failures carry their own codes (``trace_*``) and are recorded as behaviour signals.
Success is 200 with one result per envelope: ``recorded`` or ``duplicate`` (an entry the hub
already holds: recorded once, however often it comes), its ``effect`` and the effect's code.
A refused envelope is a problem with ``index`` (its place in the batch) and ``results`` (the
envelopes before it, recorded); a chain gap adds ``expected_seq`` and ``head_hash``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon

from api.http import meta, principal, read_json
from api.openapi import obj, op, open_obj
from domain.app.traces import BATCH_MAX
from domain.model.envelope import ENVELOPE_BYTES_MAX

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace

ENVELOPE = {"type": "object", "description": (
    "A TraceEnvelope: a W3C VC (eddsa-jcs-2022) signed by the device key, carrying one outbox entry "
    f"(docs/protocol.md, \"Traces\"); closed, at most {ENVELOPE_BYTES_MAX} bytes of JCS. Its members are "
    "checked by the hub with their own codes (trace_envelope_invalid, trace_signature_invalid, ...).")}
TRACES_BODY = obj(["envelopes"], envelopes={"type": "array", "minItems": 1, "maxItems": BATCH_MAX, "items": ENVELOPE})
RESULT = open_obj(seq={"type": "integer"}, entry_hash={"type": "string"}, kind={"type": "string"},
                  status={"type": "string", "enum": ["recorded", "duplicate"]},
                  effect={"type": "string", "enum": ["applied", "none", "refused"]},
                  code={"type": ["string", "null"]})
RESULTS = open_obj(results={"type": "array", "items": RESULT})
ROUTE = ("POST", "/v1/traces")  # api/authz.py: a device credential, any role


class Traces:
    openapi = {"post": op("Report outbox entries (redemptions, receipts, confirmations, refusals, heartbeats) "
                          "in device-signed envelopes; each is recorded exactly once", "traces", auth="device",
                          body=TRACES_BODY, responses={"200": RESULTS})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        body = read_json(req, TRACES_BODY)
        resp.media = self.market.traces.intake(meta(req, who), who, body["envelopes"])
