"""``aimarket``: the hub's command line (serve, worker, audit, admin)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from api.logging import configure
from domain.model.base import Meta
from domain.model.errors import MarketError
from ops.audit_trail_cli import add_parsers as audit_trail_parsers
from ops.audit_trail_cli import start_head_signer
from ops.settings import SettingsError, load_settings

EPILOG = """
Settings come from the environment. With nothing set, the hub runs embedded: SQLite files
under ./.aimarket (AIMARKET_DATA_DIR), in-process workers. For production set
AIMARKET_DATABASE_URL (PostgreSQL), AIMARKET_REDIS_URL and AIMARKET_SECRET (shared by all hosts).
"""


def _runtime() -> Any:
    from ops.bootstrap import build_runtime

    return build_runtime(load_settings())


def cmd_serve(args: argparse.Namespace) -> int:
    from ops.serve import HubServer

    settings = load_settings()
    options = {"bind": args.bind or settings.bind, "workers": args.workers or settings.web_workers}
    print(f"aimarket hub on http://{options['bind']} (store: {settings.store}, data: {settings.data_dir})",
          file=sys.stderr)
    HubServer(settings, options).run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Projection runners (one active per projection across hosts), a Dramatiq worker and
    the cron loop, until SIGTERM."""
    from dramatiq import Worker

    from ops.adapters.broker import build_broker
    from workers.cron import Cron
    from workers.jobs import Jobs, schedules

    runtime = _runtime()
    configure(runtime.settings.log_format)
    group = runtime.start_projections()
    broker = build_broker(runtime.settings)
    jobs = Jobs(broker, lambda: runtime)
    worker = Worker(broker, worker_threads=args.threads)
    worker.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cron = Cron(runtime.views, schedules(jobs), clock_s=runtime.market.now_s)
    cron_thread = threading.Thread(target=cron.run, args=(stop,), daemon=True, name="cron")
    cron_thread.start()
    start_head_signer(runtime, stop)  # a signed tree head whenever one is due (docs/audit.md)
    print(f"aimarket worker: {len(group.runners)} projections, queues {sorted(broker.get_declared_queues())}",
          file=sys.stderr)
    stop.wait()
    worker.stop()
    runtime.close()
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from ops.audit import verify_export, verify_log

    if args.file:  # offline: the export and the hub's public key(s), no database, no runtime
        from domain.model.keys import VerifyKey

        report = verify_export(args.file, [VerifyKey.from_multibase(k) for k in args.key or ()], workers=args.workers)
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    runtime = _runtime()
    try:
        domain = runtime.chain().domain() if args.chain else None  # vouchers need the chain's EIP-712 domain
        report = verify_log(runtime.market, runtime.views, voucher_domain=domain, workers=args.workers)
        if args.chain:  # the ledger against the contract, channel by channel (ops.chain_audit)
            from ops.chain_audit import verify_chain

            report["chain"] = verify_chain(runtime.market, runtime.chain())
            report["problems"] = report["problems"] + report["chain"]["problems"]
            report["ok"] = report["ok"] and report["chain"]["ok"]
    finally:
        runtime.close()
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def cmd_audit_replay(args: argparse.Namespace) -> int:
    """Rebuild every projection from position 0 into a scratch store and compare it with the
    live read models table by table (``ops.audit_replay``); ``--in-place`` rebuilds the live
    ones instead (what repairs a read model). Exit 0 only when everything is equal."""
    from ops.audit_replay import rebuild_in_place, replay
    from projections.health import projection_names

    if args.projection and args.projection not in projection_names():
        print(f"error: no projection {args.projection!r} (known: {', '.join(projection_names())})", file=sys.stderr)
        return 2
    runtime = _runtime()
    try:
        if args.in_place:
            return rebuild_in_place(runtime, args.projection)
        return replay(runtime, only=args.projection, keep=args.keep, file=args.file,
                      note=lambda line: print(line, file=sys.stderr))
    finally:
        runtime.close()


def cmd_audit_check_credential(args: argparse.Namespace) -> int:
    """Verify a VC file (eddsa-jcs-2022, eddsa-rdfc-2022, Ed25519Signature2020; proof sets and
    chains): suite, issuer and result on stdout, exit 0; or one error line with its code, exit 1."""
    from ops.credentials import check

    verified, lines = check(args.file, key=args.key, contexts=args.context, proof_purpose=args.proof_purpose,
                            any_issuer=args.any_issuer)
    print("\n".join(lines), file=sys.stdout if verified else sys.stderr)
    return 0 if verified else 1


def cmd_audit_sign_credential(args: argparse.Namespace) -> int:
    """Secure a VC file with a proof of the given suite (deterministic given --created)."""
    from ops.credentials import sign, write_json

    write_json(sign(args.file, key_file=args.key_file, suite=args.suite, created=args.created,
                    verification_method=args.verification_method, proof_purpose=args.proof_purpose,
                    nonce=args.nonce, contexts=args.context, proof_id=args.proof_id,
                    previous_proof=args.previous_proof), args.out)
    return 0


def cmd_projections_status(args: argparse.Namespace) -> int:
    """Each projection's position, the head, lag, state and last error; exits 1 when one is stalled."""
    from projections.health import read_health, status_table

    runtime = _runtime()
    try:
        states = read_health(runtime.views, runtime.market.recorder.max_notification_id() or 0)
    finally:
        runtime.close()
    print(json.dumps([h.as_dict() for h in states], indent=2) if args.json else status_table(states))
    return 1 if any(h.stalled for h in states) else 0


def cmd_projections_resume(args: argparse.Namespace) -> int:
    """Clear a projection's failure so its runner retries the failed event now (never skips it)."""
    from projections.health import projection_names, resume

    if args.name not in projection_names():
        print(f"error: no projection {args.name!r} (known: {', '.join(projection_names())})", file=sys.stderr)
        return 2
    runtime = _runtime()
    try:
        cleared = resume(runtime.views, args.name)
    finally:
        runtime.close()
    if cleared is None:
        print(f"{args.name}: no failure recorded, nothing to resume")
    else:
        print(f"{args.name}: failure at event position {cleared.event_position} cleared"
              f" ({cleared.error_type}: {cleared.error_message}); the runner retries it now")
    return 0


def cmd_grant_role(args: argparse.Namespace) -> int:
    runtime = _runtime()
    try:
        account = runtime.market.identity.grant_role(Meta("operator:cli", "cli").as_dict(), args.email, args.role)
    finally:
        runtime.close()
    print(json.dumps(account))
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    runtime = _runtime()
    try:
        kid = runtime.market.rotate_platform_key(Meta("operator:cli", "cli").as_dict(), args.purpose)
    finally:
        runtime.close()
    print(f"{args.purpose}: new key {kid}; the previous key is honoured for 24 hours")
    return 0


def cmd_resolve_refund(args: argparse.Namespace) -> int:
    runtime = _runtime()
    try:
        channel = runtime.market.refunds.resolve_card_refund(Meta("operator:cli", "cli").as_dict(), args.channel_id,
                                                     args.payment_intent_id, args.reference)
    finally:
        runtime.close()
    print(json.dumps(channel))
    return 0


def cmd_settle(args: argparse.Namespace) -> int:
    from workers.settlement import settle_channel

    runtime = _runtime()
    try:
        status = settle_channel(runtime, args.channel_id)
        print(json.dumps(runtime.market.settlement.settlement(args.channel_id).to_public()))
    finally:
        runtime.close()
    return 0 if status == "confirmed" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aimarket", description="The aimarket hub.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API under gunicorn")
    serve.add_argument("--bind", help="host:port (default 127.0.0.1:8080 or AIMARKET_BIND)")
    serve.add_argument("--workers", type=int, help="gunicorn worker processes")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run projections, background jobs and cron until stopped")
    worker.add_argument("--threads", type=int, default=4, help="Dramatiq worker threads")
    worker.set_defaults(func=cmd_worker)
    audit = sub.add_parser("audit", help="verify the event log and its audit tree; proofs; rebuild read models"
                           ).add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="walk the whole log and check it: every event, every signature "
                              "under the key valid at its time, the audit tree recomputed against every signed "
                              "tree head, sealed snapshots, the ledger")
    verify.add_argument("--chain", action="store_true",
                        help="also check every chain channel's ledger against the contract (settled <=> settled, "
                             "same amounts paid); vouchers are verified under the chain's EIP-712 domain")
    verify.add_argument("--file", metavar="EXPORT.jsonl",
                        help="verify an export of 'aimarket audit export' instead, offline (no database)")
    verify.add_argument("--key", action="append", metavar="z6Mk...",
                        help="with --file: the hub's public signing key, multibase (repeat after a rotation); "
                             "without it the keys listed in the export are used")
    verify.add_argument("--workers", type=int, help="processes checking signatures (default: 2, or 1 core)")
    verify.set_defaults(func=cmd_audit_verify)
    replay = audit.add_parser("replay", help="rebuild every read model from position 0 into a scratch store and "
                              "compare it with the live one, table by table (exit 0 only when all are equal)")
    replay.add_argument("--projection", help="only this projection")
    replay.add_argument("--keep", action="store_true", help="keep the scratch schema (or file) for inspection")
    replay.add_argument("--file", metavar="EXPORT.jsonl", help="replay an export of 'aimarket audit export' instead "
                        "of the event store")
    replay.add_argument("--in-place", action="store_true", help="rebuild the live read models instead (repairs them; "
                        "no comparison)")
    replay.set_defaults(func=cmd_audit_replay)
    _credential_parsers(audit)
    audit_trail_parsers(audit, _runtime)
    projections = sub.add_parser("projections", help="projection health; resume one after a fix").add_subparsers(
        dest="projections_command", required=True)
    status = projections.add_parser("status", help="position, head, lag, state and last error of each projection")
    status.add_argument("--json", action="store_true", help="one JSON object per projection")
    status.set_defaults(func=cmd_projections_status)
    resume = projections.add_parser("resume", help="retry a failing projection now (after the fix is deployed)")
    resume.add_argument("name")
    resume.set_defaults(func=cmd_projections_resume)
    admin = sub.add_parser("admin", help="operator tasks").add_subparsers(dest="admin_command", required=True)
    grant = admin.add_parser("grant-role", help="give an account a role (auditor, admin, ...)")
    grant.add_argument("email")
    grant.add_argument("role", choices=["buyer", "seller", "auditor", "admin"])
    grant.set_defaults(func=cmd_grant_role)
    rotate = admin.add_parser("rotate-key", help="rotate a platform key (24 h grace for the old one)")
    rotate.add_argument("purpose", choices=["session", "signing", "kx"])
    rotate.set_defaults(func=cmd_rotate_key)
    resolve = admin.add_parser("resolve-refund", help="record how a failed card refund was paid instead")
    resolve.add_argument("channel_id")
    resolve.add_argument("payment_intent_id")
    resolve.add_argument("--reference", required=True, help="what you did, for the audit log (1-200 characters)")
    resolve.set_defaults(func=cmd_resolve_refund)
    settle = admin.add_parser("settle", help="settle one closing chain channel now, in this process")
    settle.add_argument("channel_id")
    settle.set_defaults(func=cmd_settle)
    return parser


CONTEXT_HELP = ("URL=FILE: a JSON-LD context document to use for URL besides the bundled ones (repeatable; "
                "contexts are never fetched)")


def _credential_parsers(audit: Any) -> None:
    """``audit check-credential`` and ``audit sign-credential`` (docs/audit.md, "Credentials")."""
    check = audit.add_parser(
        "check-credential", help="verify a W3C Verifiable Credential file (eddsa-jcs-2022, eddsa-rdfc-2022, "
        "Ed25519Signature2020; proof sets and chains)",
        description="Prints the suite, the issuer and the result; exits 0 only when every proof verifies, "
        "otherwise prints one line 'error [code]: ...' and exits 1.")
    check.add_argument("file", help="the credential, a JSON file")
    check.add_argument("--key", help="the signer's public key (z6Mk... multibase or did:key), needed when the "
                       "verification method is not a did:key; a did:key method must be this key")
    check.add_argument("--context", action="append", metavar="URL=FILE", help=CONTEXT_HELP)
    check.add_argument("--proof-purpose", default="assertionMethod", help="the proofPurpose required "
                       "(default assertionMethod)")
    check.add_argument("--any-issuer", action="store_true", help="do not require a did:key issuer to be the "
                       "signing key (a third party's credential)")
    check.set_defaults(func=cmd_audit_check_credential)
    sign = audit.add_parser(
        "sign-credential", help="secure a credential file with a proof (for interoperability tests)",
        description="Writes the credential with its proof (JSON) to stdout or --out. The same file, key, suite "
        "and --created give the same bytes. A file that already has a proof gets a second one (a proof set).")
    sign.add_argument("file", help="the credential, a JSON file")
    sign.add_argument("--key-file", required=True, help="Ed25519 private key, mode 600: an OKP JWK, a keyPair "
                      "JSON with secretKeyMultibase, or a z3u2... multibase secret key")
    sign.add_argument("--suite", required=True, help="eddsa-jcs-2022, eddsa-rdfc-2022 or Ed25519Signature2020")
    sign.add_argument("--created", help="proof creation time, e.g. 2025-06-01T10:00:00Z (default: now)")
    sign.add_argument("--verification-method", help="default: the key's did:key#fragment")
    sign.add_argument("--proof-purpose", default="assertionMethod", help="default assertionMethod")
    sign.add_argument("--nonce", help="a nonce for the proof (none by default)")
    sign.add_argument("--proof-id", help="an id for the new proof, so that a later proof can chain to it")
    sign.add_argument("--previous-proof", action="append", metavar="ID", help="chain the new proof to this "
                      "proof id of the file (repeatable)")
    sign.add_argument("--context", action="append", metavar="URL=FILE", help=CONTEXT_HELP)
    sign.add_argument("--out", help="write here instead of stdout")
    sign.set_defaults(func=cmd_audit_sign_credential)


def check_arguments(args: argparse.Namespace) -> None:
    """The hub's one text rule (``api.http.check_text``) on every string given on the command
    line, before any command runs: an argument that is not valid text (a lone surrogate from
    bytes that are not UTF-8, a control character) is refused like the same value over HTTP."""
    from api.http import check_text

    for name, value in vars(args).items():
        if isinstance(value, str):
            check_text(value, name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        return int(args.func(args))
    except MarketError as exc:
        print(f"error [{exc.code}]: {exc.detail}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"error [settings_invalid]: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
