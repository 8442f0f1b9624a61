"""Where ``audit verify``'s CPU goes, stage by stage (``python -m ops.bench.audit --stages``).

Each stage of the walk is timed on its own over the whole log, in this process (CPU time,
the best of ``rounds``), in microseconds per event of the log: the read (the recorder's
batches), the decoding (the hub's mapper), the leaf hashes and the compact range, the ledger
replay, the signature decisions (which key must have signed what, jobs collected, none
checked), then the checks themselves by kind, run inline, and raw PyNaCl verifications of the
same count. The sum is what one core spends per event; two cores can do at best half of it
per event, whatever the split between processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def _best_us(fn: Callable[[], Any], events: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return round(best / events * 1e6, 1)


def raw_ed25519(sample: list[tuple[bytes, bytes, bytes]], count: int) -> dict[str, float]:
    """PyNaCl verifications on one core: ``count`` verifications cycling over ``sample``, per
    second of wall time and per second of CPU."""
    import nacl.signing

    keys = {raw: nacl.signing.VerifyKey(raw) for raw, _m, _s in sample}
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        raw, message, signature = sample[i % len(sample)]
        keys[raw].verify(message, signature)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"per_s": round(count / wall), "per_cpu_s": round(count / cpu) if cpu else 0}


def _check_all(check: Callable[[Any], Any], jobs: list[Any]) -> None:
    for job in jobs:
        check(job)


def stage_costs(market: Any, sample: list[tuple[bytes, bytes, bytes]], rounds: int = 2) -> dict[str, Any]:
    """CPU microseconds per event of each stage of the walk over ``market``'s log."""
    from domain.model.audit_entry import stored_leaf_hash
    from domain.model.merkle import CompactRange
    from ops.audit import _hub_keys
    from ops.ledger_audit import LedgerAudit
    from ops.signature_audit import SignatureAudit
    from ops.signature_pool import check

    rows: list[Any] = []

    def read() -> None:
        rows.clear()
        position = 0
        while batch := market.recorder.select_notifications(start=position, limit=1000, inclusive_of_start=False):
            rows.extend(batch)
            position = batch[-1].id

    read_us = _best_us(read, 1, 1)  # the rows are kept for the stages below
    events = len(rows)
    costs: dict[str, float] = {"read": round(read_us / events, 1)}
    decode = market.mapper.to_domain_event
    decoded = [decode(n) for n in rows]

    def decode_all() -> None:  # nothing kept, as in the walk (a kept list of a million events costs the GC)
        for n in rows:
            decode(n)
    costs["decode"] = _best_us(decode_all, events, rounds)
    leaves = [stored_leaf_hash(n.id, n.originator_id, n.originator_version, n.topic, n.state) for n in rows]

    def hash_all() -> None:
        for n in rows:
            stored_leaf_hash(n.id, n.originator_id, n.originator_version, n.topic, n.state)
    costs["leaf hash"] = _best_us(hash_all, events, rounds)

    def tree() -> None:
        compact = CompactRange()
        for leaf in leaves:
            compact.append(leaf)
    costs["compact range"] = _best_us(tree, events, rounds)

    def money() -> None:
        ledger = LedgerAudit(None)
        for n, e in zip(rows, decoded, strict=True):
            ledger.feed(n.id, e)
    costs["ledger"] = _best_us(money, events, rounds)
    jobs: list[Any] = []

    def decisions() -> None:
        jobs.clear()
        audit = SignatureAudit(_hub_keys(market), workers=0, pool_after_jobs=10**12)
        audit.checker.add = jobs.append  # type: ignore[method-assign] # collect, do not check
        for n, e in zip(rows, decoded, strict=True):
            audit.feed(n.id, n.topic, e, bytes(n.state))
    costs["signature decisions"] = _best_us(decisions, events, rounds)
    kinds: dict[str, list[Any]] = {}
    for job in jobs:
        kinds.setdefault(job[3], []).append(job)
    per_job: dict[str, float] = {}
    for kind, kind_jobs in kinds.items():
        costs[f"check {kind}"] = _best_us(lambda js=kind_jobs: _check_all(check, js), events, 1)
        per_job[kind] = round(costs[f"check {kind}"] * events / len(kind_jobs), 1)
    raw = raw_ed25519(sample, len(jobs))
    costs["of which raw Ed25519"] = round(len(jobs) / raw["per_cpu_s"] / events * 1e6, 1) if raw["per_cpu_s"] else 0
    total = round(sum(v for k, v in costs.items() if k != "of which raw Ed25519"), 1)
    return {"events": events, "us_per_event": costs, "total_us_per_event": total,
            "jobs": {k: len(v) for k, v in kinds.items()}, "check_us_per_job": per_job,
            "two_cores_at_best_events_per_s": round(2e6 / total) if total else 0}
