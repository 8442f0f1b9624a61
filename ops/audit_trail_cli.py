"""The audit trail's commands: ``aimarket audit check-proof``, ``export`` and ``sign-head``,
and the head signer a worker runs (docs/audit.md, "The audit tree").

``check-proof`` is offline: it reads a file and the hub's public key(s) given on the command
line, and builds no runtime, opens no database and makes no network connection.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domain.app.audit_trail import AuditTrail, HeadPolicy, run_head_signer
from domain.model.audit_entry import (
    CONSISTENCY_TYPE,
    EXPORT_TYPE,
    INCLUSION_TYPE,
    ExportChecker,
    check_consistency_bundle,
    check_inclusion_bundle,
)
from domain.model.errors import InvalidInput, MarketError, ProofInvalid, TreeHeadInvalid
from domain.model.jcs import loads_strict
from domain.model.keys import VerifyKey

LINE_BYTES_MAX = 8 * 1024 * 1024


def audit_trail(runtime: Any) -> AuditTrail:
    """The service over this runtime's tree, with the head policy from the settings."""
    from projections.audit_tree import TreeStore

    s = runtime.settings
    return AuditTrail(runtime.market, TreeStore(runtime.views),
                      HeadPolicy(every_events=s.tree_head_every_events, every_s=s.tree_head_every_s))


def start_head_signer(runtime: Any, stop: threading.Event) -> threading.Thread:
    """The worker's thread that signs a tree head whenever one falls due."""
    thread = threading.Thread(target=run_head_signer, args=(audit_trail(runtime), stop), daemon=True,
                              name="tree-heads")
    thread.start()
    return thread


def cmd_check_proof(args: argparse.Namespace) -> int:
    """Verify an inclusion proof, a consistency proof or a whole export with the hub's key(s)."""
    keys = [VerifyKey.from_multibase(k) for k in args.hub_key]
    path = Path(args.file)
    try:
        with path.open("rb") as fh:
            first = fh.readline(LINE_BYTES_MAX + 1)
            if _is_export(first):
                return _check_export(path, keys)
            raw = first + fh.read(LINE_BYTES_MAX + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", param="file") from None
    try:
        document = _json(raw, "the proof file")
        kind = document.get("type") if isinstance(document, dict) else None
        if kind == INCLUSION_TYPE:
            entry, head = check_inclusion_bundle(document, keys)
            print(f"ok: the entry at position {entry['position']} (leaf {document['leaf_index']}) is in the tree of "
                  f"size {head.tree_size} signed by {head.origin} at {head.timestamp_ms} ms")
            return 0
        if kind == CONSISTENCY_TYPE:
            first_head, second = check_consistency_bundle(document, keys)
            print(f"ok: the tree of size {second.tree_size} extends the tree of size {first_head.tree_size} "
                  f"({second.origin})")
            return 0
        raise ProofInvalid(f"not an audit proof: expected type {INCLUSION_TYPE}, {CONSISTENCY_TYPE} or an export")
    except (ProofInvalid, TreeHeadInvalid) as exc:
        print(f"error [{exc.code}]: {exc.detail}", file=sys.stderr)
        return 1


def _is_export(first_line: bytes) -> bool:
    try:
        header = json.loads(first_line)
    except ValueError:
        return False
    return isinstance(header, dict) and header.get("type") == EXPORT_TYPE


def _check_export(path: Path, keys: list[VerifyKey]) -> int:
    checker = ExportChecker(keys)
    with path.open("rb") as fh:
        while line := fh.readline(LINE_BYTES_MAX + 1):
            if not line.strip():
                continue
            try:
                record = _json(line, "the line")
            except ProofInvalid as exc:
                checker.line += 1
                checker.add_problem(exc.detail)
                continue
            checker.feed(record)
    report = checker.finish()
    if report["ok"]:
        print(f"ok: {report['entries']} entries, {report['heads']} signed tree heads, all verified "
              f"(tree size {report['tree_size']})")
        return 0
    for problem in report["problems"]:
        print(f"error [proof_invalid]: {problem}", file=sys.stderr)
    return 1


def _json(raw: bytes, what: str) -> Any:
    if len(raw) > LINE_BYTES_MAX:
        raise ProofInvalid(f"{what} is larger than {LINE_BYTES_MAX} bytes")
    try:
        return loads_strict(raw)
    except MarketError as exc:
        raise ProofInvalid(f"{what} is not JSON: {exc.detail}") from None


def cmd_export(args: argparse.Namespace, runtime_factory: Callable[[], Any]) -> int:
    """Write every entry up to the latest signed head, with every head, as JSONL."""
    runtime = runtime_factory()
    try:
        trail = audit_trail(runtime)
        out = Path(args.out)
        tmp = out.with_name(out.name + ".partial")
        with tmp.open("w", encoding="utf-8") as fh:
            summary = trail.export(lambda record: fh.write(json.dumps(record, separators=(",", ":")) + "\n"))
        tmp.replace(out)
    finally:
        runtime.close()
    print(f"{args.out}: {summary['entries']} entries and {summary['heads']} signed tree heads "
          f"(tree size {summary['tree_size']})")
    return 0


def cmd_sign_head(args: argparse.Namespace, runtime_factory: Callable[[], Any]) -> int:
    """Sign a tree head now over everything the tree holds (what the worker does when one is due)."""
    runtime = runtime_factory()
    try:
        for runner in runtime.runners():  # the tree first catches up with the log
            if runner.projection.name == "audit_tree":
                runner.catch_up()
        signed = audit_trail(runtime).sign_head(force=True)
    finally:
        runtime.close()
    if signed is None:
        print("no new entries since the last signed head")
    else:
        print(json.dumps(signed.as_dict(), indent=2))
    return 0


def add_parsers(audit: Any, runtime_factory: Callable[[], Any]) -> None:
    """``audit check-proof``, ``audit export``, ``audit sign-head`` (commands that need the hub's
    data get their runtime from ``runtime_factory``, the entry point's)."""
    check = audit.add_parser(
        "check-proof", help="verify an inclusion proof, a consistency proof or a JSONL export offline",
        description="Needs only the file and the hub's public key(s): every signed tree head must verify under "
        "one of them, every entry must hash into the tree the heads sign. Exits 0 when everything verifies; "
        "otherwise prints 'error [code]: ...' lines and exits 1 (2 for a file that cannot be read).")
    check.add_argument("file", help="a proof (JSON, from GET /v1/audit or /v1/audit/consistency) or an export (JSONL)")
    check.add_argument("--hub-key", action="append", required=True, metavar="z6Mk...",
                       help="the hub's Ed25519 public key, multibase (repeat it for each key after a rotation: "
                       "GET /v1/audit/tree-heads lists them)")
    check.set_defaults(func=cmd_check_proof)
    export = audit.add_parser("export", help="write the log up to the latest signed tree head, with the heads, "
                              "as JSONL for offline verification")
    export.add_argument("--out", required=True, metavar="FILE.jsonl", help="where to write (replaced atomically)")
    export.set_defaults(func=lambda args: cmd_export(args, runtime_factory))
    sign = audit.add_parser("sign-head", help="catch the audit tree up and sign a tree head now")
    sign.set_defaults(func=lambda args: cmd_sign_head(args, runtime_factory))
