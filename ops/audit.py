"""``aimarket audit verify``: replay the whole log and check what every event promises.

Checks: positions strictly increase; every event decodes with the current code; every
event carries ``meta`` with an actor and a correlation id; aggregate versions are
contiguous per stream; every signature the events carry, under the key valid at the event's
time (``ops.signature_audit``, checked on both cores); the audit tree recomputed from the
stored records against every signed tree head, the stored leaves and the sealed snapshots
(``ops.tree_audit``: the first differing log position is named); and the money in it
(``ops.ledger_audit``): channels replayed with their invariants after every event, postings
balanced, the ledger's invariants, and the balances read model equal to the log up to the
position it has reached. With the read models at hand it also reports every projection's
health (``projections.health``): a projection that is failing, stuck or without a runner is
a problem, so the command exits 1.

``verify_export`` runs the same walk over an ``aimarket audit export`` file, without a
database: the tree against the signed heads in the file, signatures, versions, meta and the
ledger's own invariants (there is no read model to compare with). It needs only the hub's
public signing key(s).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ops.ledger_audit import LedgerAudit
from ops.signature_audit import POOL_AFTER_JOBS, SignatureAudit
from ops.tree_audit import TreeAudit

BATCH = 1000
PROBLEMS_MAX = 100
LINE_BYTES_MAX = 8 * 1024 * 1024


class Walk:
    """The checks every event gets, in log order (shared by the live and the export verify)."""

    def __init__(self, mapper: Any, money: LedgerAudit, signatures: SignatureAudit, tree: Any = None) -> None:
        self.mapper = mapper
        self.money = money
        self.signatures = signatures
        self.tree = tree  # fed (record, event | None): TreeAudit on the live store
        self.problems: list[str] = []
        self.versions: dict[str, int] = {}
        self.position = 0
        self.count = 0
        # the stored state is the event's plain JSON: the signature workers may parse it themselves
        self.plain = getattr(mapper, "cipher", None) is None and getattr(mapper, "compressor", None) is None

    def feed(self, n: Any) -> None:
        if n.id <= self.position:
            self.problems.append(f"position {n.id} does not increase")
        self.position = n.id
        self.count += 1
        try:
            event = self.mapper.to_domain_event(n)
        except Exception as exc:  # noqa: BLE001 - report, do not stop the audit
            self.problems.append(f"position {n.id}: cannot decode ({type(exc).__name__})")
            event = None
        if self.tree is not None:
            self.tree.feed(n, event)
        if event is None:
            return
        meta = getattr(event, "meta", None)
        if not isinstance(meta, dict) or not meta.get("actor") or not meta.get("correlation_id"):
            self.problems.append(f"position {n.id}: event without actor/correlation_id")
        stream = str(n.originator_id)
        expected = self.versions.get(stream, 0) + 1
        if n.originator_version != expected:
            self.problems.append(f"position {n.id}: stream {stream} version {n.originator_version}, "
                                 f"expected {expected}")
        self.versions[stream] = n.originator_version
        self.money.feed(n.id, event)
        self.signatures.feed(n.id, n.topic, event, bytes(n.state) if self.plain else None)


def verify_log(market: Any, views: Any = None, *, stall_after_s: float | None = None, voucher_domain: Any = None,
               workers: int | None = None, pool_after_jobs: int = POOL_AFTER_JOBS) -> dict[str, Any]:
    """Walk the whole log; ``views`` (the read-model store) adds the balances cross-check, the
    audit tree and the projections' health; ``voucher_domain`` (the chain's EIP-712 domain)
    lets vouchers be verified; ``workers`` processes check signatures (default: both cores)."""
    tracked, balances, pending = _balances_snapshot(views)  # before the walk: the log only grows
    tree = TreeAudit(market, views) if views is not None else None  # heads and leaves read before the walk
    signatures = SignatureAudit(_hub_keys(market), voucher_domain=voucher_domain, workers=workers,
                                pool_after_jobs=pool_after_jobs)
    walk = Walk(market.mapper, LedgerAudit(tracked), signatures, tree)
    try:
        position = 0
        while batch := market.recorder.select_notifications(start=position, limit=BATCH, inclusive_of_start=False):
            for n in batch:
                walk.feed(n)
            position = batch[-1].id
        signature_report = signatures.report()
    finally:
        signatures.close()
    ledger_report = walk.money.report(balances, pending)
    problems = walk.problems + walk.money.problems
    problems[:0] = signature_report["problems"]
    tree_report = tree.report() if tree is not None else None
    if tree_report is not None:
        problems[:0] = tree_report["problems"]  # the tamper evidence leads the report
    projections = _projections(market, views, stall_after_s)
    problems[:0] = [f"projection {p['detail']}" + (f" (error: {p['error']})" if p["error"] else "")
                    for p in projections.values() if p["stalled"]]
    return {"ok": not problems, "events": walk.count, "streams": len(walk.versions), "head_position": walk.position,
            "ledger": ledger_report, "signatures": signature_report, "tree": tree_report, "projections": projections,
            "problems": problems[:PROBLEMS_MAX]}


def _hub_keys(market: Any) -> Any:
    def key(kid: str) -> bytes | None:
        if not kid.startswith("signing-"):
            return None
        return bytes(market.secrets.signing_key(kid).verify_key)
    return key


def verify_export(path: str | Path, keys: Iterable[Any] = (), *, voucher_domain: Any = None,
                  workers: int | None = None, pool_after_jobs: int = POOL_AFTER_JOBS) -> dict[str, Any]:
    """Verify an export file offline with the hub's public key(s) (``VerifyKey``; none: the keys
    the export's header lists, which then only proves the file is consistent with itself)."""
    from domain.model.audit_entry import ExportChecker
    from domain.model.keys import VerifyKey

    given = list(keys)
    header, lines = _export_lines(Path(path))
    listed = {kid: VerifyKey.from_multibase(k["public_key"]) for kid, k in (header.get("keys") or {}).items()
              if isinstance(k, dict) and isinstance(k.get("public_key"), str)}
    trusted = given or list(listed.values())
    problems = [f"the export lists platform key {kid}, which is not a key you gave" for kid, k in listed.items()
                if given and k not in given]
    checker = ExportChecker(trusted)
    checker.feed(header)
    signatures = SignatureAudit(lambda kid: bytes(listed[kid]) if kid in listed and listed[kid] in trusted else None,
                                voucher_domain=voucher_domain, workers=workers, pool_after_jobs=pool_after_jobs)
    walk = Walk(export_mapper(), LedgerAudit(None), signatures)
    try:
        for record in lines:
            checker.feed(record)
            entry = record.get("entry") if isinstance(record, dict) and record.get("type") == "entry" else None
            if isinstance(entry, dict):
                stored = _stored(entry)
                if stored is not None:
                    walk.feed(stored)
        signature_report = signatures.report()
    finally:
        signatures.close()
    tree_report = checker.finish()
    ledger_report = walk.money.report(None, None)
    problems += [f"audit tree: {p}" for p in tree_report["problems"]] + signature_report["problems"]
    problems += walk.problems + walk.money.problems
    return {"ok": not problems, "file": str(path), "keys": "given" if given else "listed in the export (not given)",
            "events": walk.count, "streams": len(walk.versions), "head_position": walk.position,
            "ledger": ledger_report, "signatures": signature_report, "tree": tree_report,
            "problems": problems[:PROBLEMS_MAX]}


def export_mapper() -> Any:
    """The library's mapper with the transcodings the hub stores events with (JSON, no cipher)."""
    from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, Mapper, UUIDAsHex

    from domain.app.eventsourcing_ext import FastJSONTranscoder

    transcoder = FastJSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


def _export_lines(path: Path) -> tuple[dict[str, Any], Iterable[Any]]:
    from domain.model.errors import InvalidInput

    try:
        fh = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", param="file") from None
    first = fh.readline(LINE_BYTES_MAX + 1)
    try:
        header = json.loads(first)
    except ValueError:
        fh.close()
        raise InvalidInput(f"{path} is not an audit export (its first line is not JSON)", param="file") from None
    if not isinstance(header, dict):
        fh.close()
        raise InvalidInput(f"{path} is not an audit export", param="file")

    def records() -> Iterable[Any]:
        with fh:
            while line := fh.readline(LINE_BYTES_MAX + 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        yield None  # the checker names the line
    return header, records()


def _stored(entry: dict[str, Any]) -> Any:
    """The entry as the store held it (what the mapper decodes), or None when malformed (the
    tree checker reports it)."""
    import uuid

    try:
        state = entry["state"].encode("utf-8") if "state" in entry else base64.b64decode(entry["state_b64"])
        return SimpleNamespace(id=int(entry["position"]), originator_id=uuid.UUID(entry["originator_id"]),
                               originator_version=int(entry["originator_version"]), topic=str(entry["topic"]),
                               state=state)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


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
