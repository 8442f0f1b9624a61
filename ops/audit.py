"""``aimarket audit verify``: replay the whole log and check what every event promises.

Checks: positions strictly increase; every event decodes with the current code; every
event carries ``meta`` with an actor and a correlation id; aggregate versions are
contiguous per stream; and the money in it (``ops.ledger_audit``): channels replayed with
their invariants after every event, postings balanced, the ledger's invariants, and the
balances read model equal to the log up to the position it has reached.
"""

from __future__ import annotations

from typing import Any

from ops.ledger_audit import LedgerAudit

BATCH = 1000


def verify_log(market: Any, views: Any = None) -> dict[str, Any]:
    """Walk the whole log; ``views`` (the read-model store) adds the balances cross-check."""
    problems: list[str] = []
    tracked, read_model = _balances_snapshot(views)  # before the walk: the log only grows
    money = LedgerAudit(tracked)
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
    ledger_report = money.report(read_model)
    problems += money.problems
    return {"ok": not problems, "events": count, "streams": len(versions), "head_position": position,
            "ledger": ledger_report, "problems": problems[:100]}


def _balances_snapshot(views: Any) -> tuple[int | None, list[dict[str, Any]] | None]:
    """The balances projection's position and rows, read by one statement (one snapshot, even
    while a runner commits); ``(None, None)`` without read models to compare."""
    if views is None:
        return None, None
    from projections.balances import Balances

    rows = views.fetchall(
        "SELECT t.position, b.account, b.currency, b.balance_minor FROM projection_tracking t"
        " LEFT JOIN ledger_balances b ON 1 = 1 WHERE t.name = ?", (Balances.name,))
    if not rows:
        return None, None
    return int(rows[0]["position"]), [r for r in rows if r["account"] is not None]
