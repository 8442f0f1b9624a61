"""W3C Trace Context (``traceparent``) for the hub: read, start, answer and record a trace.

Every request gets a :class:`TraceContext`: the caller's trace when its ``traceparent`` is
valid by the W3C grammar (version 00 exactly 55 characters; a later version at least that and
a ``-`` after it; lowercase hex; trace-id and parent-id not all zeros; version ``ff`` refused),
otherwise a new trace, never a refusal: a tracing header is advice, not input a request can
fail on. The hub's own span is new for each request; the answer carries
``traceparent: 00-<trace-id>-<hub span>-<flags>`` and the log lines bind ``trace_id`` and
``span_id`` (structlog contextvars).

One transaction is one trace (``docs/adr/0007-trace-id-is-the-transaction-id.md``): a request
that acts on a purchase is re-rooted on the purchase's trace, whose trace-id is the purchase
id's 32 hex digits. ``POST /v1/purchases`` knows its purchase id before anything is recorded
(``purchase_id_for(buyer, Idempotency-Key)``, a retry lands on the same id), and a route with
``{purchase_id}`` in its path names it (compute invocations alike: ``POST /v1/invocations``,
``{invocation_id}``); the seller's node sends the same trace-id on the
``POST /v1/traces`` that reports the purchase's redemption and receipts (``node/delivery/
trace_context.py``). The caller's own trace, when it differs, is kept in the events' meta as
``trace_link``, so a buyer can still find the purchase from its own trace.

``event_meta`` is what ``api.http.meta`` adds to every event: ``traceparent`` (the hub's span
that recorded it), ``parent_span_id`` (the caller's span, when it sent one on the same trace)
and ``trace_link``.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import falcon

from domain.model.invocation import invocation_id_for
from domain.model.principal import Principal
from domain.model.purchase import purchase_id_for

HEADER = "traceparent"
_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_LATER = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_IDEMPOTENCY = re.compile(r"^[\x21-\x7e]{1,255}$")  # api.resources.money's rule for the key
# The routes that create a transaction, and its id from the buyer and the Idempotency-Key.
TRANSACTION_ROOTS = {"/v1/purchases": purchase_id_for, "/v1/invocations": invocation_id_for}


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One request's place in a trace: ``trace_id`` (32 hex), the hub's ``span_id`` (16 hex),
    the caller's ``parent_id`` (None when the hub started the trace) and ``flags`` (2 hex)."""

    trace_id: str
    span_id: str
    parent_id: str | None = None
    flags: str = "01"
    link: str | None = None  # the caller's traceparent when the request was re-rooted

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse(value: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid ``traceparent``, else None (W3C level 1)."""
    if not value or len(value) > 512:
        return None
    value = value.strip(" \t")
    match = _VERSION_00.fullmatch(value)
    if match is None:
        later = _LATER.fullmatch(value)
        if later is None or later.group(1) in ("00", "ff"):  # 00 must be exact; ff is forbidden
            return None
        trace_id, parent_id, flags = later.group(2), later.group(3), later.group(4)
    else:
        trace_id, parent_id, flags = match.groups()
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


class SpanIds:
    """Span and trace ids from a per-process generator seeded by the OS (built after fork):
    a ``getrandom`` call per request would cost more than the rest of the header handling."""

    def __init__(self) -> None:
        self._random = random.Random(os.urandom(32))

    def span(self) -> str:
        return f"{self._random.getrandbits(64) or 1:016x}"

    def trace(self) -> str:
        return f"{self._random.getrandbits(128) or 1:032x}"

    def start(self, header: str | None) -> TraceContext:
        """The request's context: the caller's trace when its header is valid, else a new one."""
        parsed = parse(header)
        if parsed is None:
            return TraceContext(self.trace(), self.span())
        trace_id, parent_id, flags = parsed
        return TraceContext(trace_id, self.span(), parent_id, flags)


def transaction_trace_id(transaction_id: UUID | str) -> str:
    """The trace-id of a transaction: its UUID's 32 hex digits (ADR 0007)."""
    return (transaction_id if isinstance(transaction_id, UUID) else UUID(str(transaction_id))).hex


def rerooted(trace: TraceContext, transaction_id: UUID | str) -> TraceContext:
    """``trace`` moved onto the transaction's trace, the caller's own kept as the link."""
    trace_id = transaction_trace_id(transaction_id)
    if trace.trace_id == trace_id:
        return trace
    link = f"00-{trace.trace_id}-{trace.parent_id}-{trace.flags}" if trace.parent_id else None
    return TraceContext(trace_id, trace.span_id, None, trace.flags, link)


def transaction_of(req: falcon.Request, who: Principal | None) -> UUID | str | None:
    """The transaction a request acts on, when the route says (module docstring)."""
    params: dict[str, Any] = getattr(req.context, "params", None) or {}
    named = params.get("purchase_id") or params.get("invocation_id")
    if named is not None:
        try:
            return UUID(named)
        except ValueError:
            return None
    root = TRANSACTION_ROOTS.get(req.uri_template or "") if req.method == "POST" else None
    if root is not None and who is not None and who.account_id:
        key = req.get_header("Idempotency-Key")
        if key and _IDEMPOTENCY.fullmatch(key):
            return root(who.account_id, key)
    return None


def event_meta(req: falcon.Request, who: Principal | None) -> dict[str, str]:
    """``traceparent`` (and ``trace_link``) for the events a request records; re-roots the
    request on its transaction's trace first, so the answer's header says the same."""
    trace: TraceContext | None = getattr(req.context, "trace", None)
    if trace is None:
        return {}
    transaction = transaction_of(req, who)
    if transaction is not None:
        trace = req.context.trace = rerooted(trace, transaction)
    extra = {"traceparent": trace.traceparent}
    if trace.parent_id:
        extra["parent_span_id"] = trace.parent_id  # the caller's span (the node's, on a trace batch)
    if trace.link:
        extra["trace_link"] = trace.link
    return extra
