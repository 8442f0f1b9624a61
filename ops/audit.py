"""``aimarket audit verify``: replay the whole log and check what every event promises.

Checks now: positions strictly increase; every event decodes with the current code;
every event carries ``meta`` with an actor and a correlation id; aggregate versions
are contiguous per stream. Later issues add signature and ledger checks here.
"""

from __future__ import annotations

from typing import Any

BATCH = 1000


def verify_log(market: Any) -> dict[str, Any]:
    problems: list[str] = []
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
    return {"ok": not problems, "events": count, "streams": len(versions), "head_position": position,
            "problems": problems[:100]}
