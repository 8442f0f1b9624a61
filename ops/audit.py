"""``aimarket audit verify``: replay the whole log and check what every event promises.

Checks: positions strictly increase; every event decodes with the current code; every
event carries ``meta`` with an actor and a correlation id; aggregate versions are
contiguous per stream; the audit tree recomputed from the stored records against every
signed tree head, the stored leaves and the sealed snapshots (``ops.tree_audit``: the first
differing log position is named); and the money in it (``ops.ledger_audit``): channels replayed with
their invariants after every event, postings balanced, the ledger's invariants, and the
balances read model equal to the log up to the position it has reached. With the read
models at hand it also reports every projection's health (``projections.health``): a
projection that is failing, stuck or without a runner is a problem, so the command exits 1.
"""

from __future__ import annotations

from typing import Any

from ops.ledger_audit import LedgerAudit
from ops.tree_audit import TreeAudit

BATCH = 1000


def verify_log(market: Any, views: Any = None, *, stall_after_s: float | None = None) -> dict[str, Any]:
    """Walk the whole log; ``views`` (the read-model store) adds the balances cross-check and
    the projections' health."""
    problems: list[str] = []
    tracked, balances, pending = _balances_snapshot(views)  # before the walk: the log only grows
    money = LedgerAudit(tracked)
    tree = TreeAudit(market, views) if views is not None else None  # heads and leaves read before the walk
    versions: dict[str, int] = {}
    position, count = 0, 0
    while True:
        batch = market.recorder.select_notifications(start=position, limit=BATCH, inclusive_of_start=False)
        if not batch:
            break
        for n in batch:
            if n.id <= position:
                problems.append(f"position {n.id} does not increase")
            position = n.id
            count += 1
            try:
                event = market.mapper.to_domain_event(n)
            except Exception as exc:  # noqa: BLE001 - report, do not stop the audit
                problems.append(f"position {n.id}: cannot decode ({type(exc).__name__})")
                event = None
            if tree is not None:
                tree.feed(n, event)
            if event is None:
                continue
            meta = getattr(event, "meta", None)
            if not isinstance(meta, dict) or not meta.get("actor") or not meta.get("correlation_id"):
                problems.append(f"position {n.id}: event without actor/correlation_id")
            stream = str(n.originator_id)
            expected = versions.get(stream, 0) + 1
            if n.originator_version != expected:
                problems.append(f"position {n.id}: stream {stream} version {n.originator_version}, "
                                f"expected {expected}")
            versions[stream] = n.originator_version
            money.feed(n.id, event)
    ledger_report = money.report(balances, pending)
    problems += money.problems
    tree_report = tree.report() if tree is not None else None
    if tree_report is not None:
        problems[:0] = tree_report["problems"]  # the tamper evidence leads the report
    projections = _projections(market, views, stall_after_s)
    problems[:0] = [f"projection {p['detail']}" + (f" (error: {p['error']})" if p["error"] else "")
                    for p in projections.values() if p["stalled"]]
    return {"ok": not problems, "events": count, "streams": len(versions), "head_position": position,
            "ledger": ledger_report, "tree": tree_report, "projections": projections, "problems": problems[:100]}


def _projections(market: Any, views: Any, stall_after_s: float | None) -> dict[str, dict[str, Any]]:
    """Each projection's state, read after the walk (a stalled one leads the problems)."""
    if views is None:
        return {}
    from projections.health import read_health

    head = market.recorder.max_notification_id() or 0
    return {h.name: {"state": h.state, "stalled": h.stalled, "position": h.position, "head": h.head, "lag": h.lag,
                     "detail": h.detail, "error": h.failure.error_message if h.failure and h.failure.failing else None}
            for h in read_health(views, head, stall_after_s=stall_after_s)}


def _balances_snapshot(views: Any) -> tuple[int | None, dict | None, dict | None]:
    """The balances projection's position, ``ledger_balances`` and each channel's card
    refund pending, read by one statement (one snapshot, even while a runner commits);
    all None without read models to compare."""
    if views is None:
        return None, None, None
    from projections.balances import Balances

    rows = views.fetchall(
        "SELECT t.position, 'b' AS kind, b.account AS k1, b.currency AS k2, b.balance_minor AS v"
        " FROM projection_tracking t LEFT JOIN ledger_balances b ON 1 = 1 WHERE t.name = ?"
        " UNION ALL SELECT t.position, 'c', c.channel_id, '', c.card_refund_pending_minor"
        " FROM projection_tracking t JOIN money_channels c ON 1 = 1 WHERE t.name = ?",
        (Balances.name, Balances.name))
    if not rows:
        return None, None, None
    balances = {(r["k1"], r["k2"]): int(r["v"]) for r in rows if r["kind"] == "b" and r["k1"] is not None}
    pending = {r["k1"]: int(r["v"]) for r in rows if r["kind"] == "c"}
    return int(rows[0]["position"]), balances, pending
