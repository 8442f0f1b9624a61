"""``aim-node compute register|serve|invoke``: compute assets at the seller's node, and the buyer's calls."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domain.model.errors import InvalidInput, MarketError
from domain.model.keys import VerifyKey
from node.compute.registry import Registry
from node.compute.run import announce, paths, serve
from node.compute.server import ComputeConfig
from node.delivery.keys import load_buyer_key
from node.delivery.run import hub_keys_from_discovery, parse_hub_keys
from node.delivery.wire import parse_endpoint
from node.hub_client import HubClient

DEFAULT_LISTEN = "127.0.0.1:9191"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _hub_keys(args: argparse.Namespace, hub_url: str | None) -> dict[str, VerifyKey]:
    if args.hub_key:
        return parse_hub_keys(args.hub_key)
    url = args.hub or hub_url
    if not url:
        raise InvalidInput("give the hub's signing key with --hub-key (or --hub URL to read it from the hub)")
    return hub_keys_from_discovery(HubClient(url).request("GET", "/.well-known/ai-market.json"))


def cmd_register(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any], home: Path) -> int:
    registry = Registry(paths(home)[0])
    try:
        asset = registry.register(args.listing, args.manifest, wall_ms(), check_import=not args.no_import_check)
    finally:
        registry.close()
    m = asset.manifest
    print(json.dumps({"registered": asset.listing_id, "name": m.name, "entry_point": m.entry_point,
                      "unit": m.metering.unit, "max_units_per_call": m.metering.max_units_per_call,
                      "manifest_hash": asset.manifest_hash}, indent=2))
    return 0


def registered_assets(home: Path) -> dict[str, Any]:
    """The compute assets registered in ``home`` (InvalidInput when there is none)."""
    registry = Registry(paths(home)[0])
    try:
        assets = registry.assets()
    finally:
        registry.close()
    if not assets:
        raise InvalidInput("no compute asset is registered: run `aim-node compute register MANIFEST --listing ID`")
    return assets


def cmd_serve(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any], home: Path) -> int:
    store = load(args)
    if not store.device_id:
        raise InvalidInput("this node is not enrolled yet: run `aim-node enroll` first")
    assets = registered_assets(home)
    bare = frozenset(args.bare_listing or ())
    if bare - set(assets):
        raise InvalidInput(f"--bare-listing names unregistered listings: {sorted(bare - set(assets))}")
    keys = [store.signing_key] + ([store.previous_signing_key] if store.previous_signing_key else [])
    config = ComputeConfig(
        device_id=store.device_id, device_keys=keys, hub_keys=_hub_keys(args, store.hub_url),
        max_connections=args.max_connections, max_per_client=args.max_per_client, idle_timeout_s=args.idle_timeout,
        max_session_s=args.max_session, max_concurrency=args.max_concurrency, max_bytes_in=args.max_bytes_in,
        max_bytes_out=args.max_bytes_out, max_call_s=args.max_call, final_grace_s=args.final_grace,
        bare_listings=bare)
    host, port = parse_endpoint(args.listen)
    safety = {"rate_per_s": args.rate, "rate_burst": args.rate_burst, "extra_patterns": args.deny_pattern or ()}
    asyncio.run(serve(config, assets, home, host, port, workers=args.workers, max_queue=args.max_queue,
                      safety_options=safety, ready=announce))
    return 0


def _inputs(args: argparse.Namespace) -> list[Any]:
    if args.input_file:
        text = Path(args.input_file).read_text()
    elif args.input is not None:
        text = args.input
    else:
        raise InvalidInput("give the call's input with --input JSON or --input-file FILE")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"the input is not JSON: {exc}") from exc
    return [value] * args.repeat


def cmd_invoke(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any], home: Path) -> int:
    from node.compute.client import open_session

    token = Path(args.token).read_text().strip()
    key = load_buyer_key(args.key)
    previous = json.loads(Path(args.resume).read_text()) if args.resume else None
    session = open_session(token, key, _hub_keys(args, None), seller=args.seller, previous=previous)
    results, failures = [], 0
    try:
        for value in _inputs(args):
            try:
                result = session.invoke(value)
                results.append({"output": result.output, "units": result.units, "amount_minor": result.amount_minor})
            except MarketError as exc:
                failures += 1
                results.append({"error": exc.code, "detail": exc.detail, **{k: v for k, v in exc.extra.items()
                                                                           if isinstance(v, (int, str))}})
                if exc.code in ("budget_exhausted", "invoke_session_closed") or exc.status in (401, 403):
                    break
    finally:
        final = session.disconnect() if args.keep_open else session.close()
    last = final or session.last_receipt
    if args.receipt:
        Path(args.receipt).write_text(json.dumps(last, indent=2) + "\n")
    subject = last["credentialSubject"] if last else {}
    print(json.dumps({"results": results, "session": "open" if args.keep_open else "closed",
                      "seq": subject.get("seq"), "cumulative_units": subject.get("cumulative_units"),
                      "cumulative_amount_minor": subject.get("cumulative_amount_minor"),
                      "currency": subject.get("currency"), "receipt": args.receipt}, indent=2))
    return 1 if failures else 0


def _serve_parser(sub: Any, bind: Callable[..., Any]) -> None:
    p = sub.add_parser("serve", help="serve registered compute assets to holders of invoke tokens")
    p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"host:port (default {DEFAULT_LISTEN})")
    p.add_argument("--hub-key", action="append", help="trusted hub signing key, [KID=]z6Mk… (repeatable; default: "
                                                       "the hub's discovery document)")
    p.add_argument("--hub", help="hub URL to read the signing key from (default: the enrolled hub)")
    p.add_argument("--workers", type=int, default=2, help="worker processes running the callables (2)")
    p.add_argument("--max-queue", type=int, default=256, help="calls that may wait for a worker (256)")
    p.add_argument("--max-connections", type=int, default=64)
    p.add_argument("--max-per-client", type=int, default=8, help="connections per client address")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="seconds a connection may stay silent with no "
                                                                    "call running (the session stays open)")
    p.add_argument("--max-session", type=float, default=3600.0, help="seconds a session may last after it is bound "
                                                                     "(never past the token's exp)")
    p.add_argument("--max-concurrency", type=int, default=16, help="calls running at once per session (at most the "
                                                                   "token's max_concurrency)")
    p.add_argument("--max-bytes-in", type=int, default=2**30, help="input bytes per session")
    p.add_argument("--max-bytes-out", type=int, default=2**30, help="output bytes per session")
    p.add_argument("--max-call", type=float, default=600.0, help="seconds any call may run (the manifest's "
                                                                 "timeout_ms applies below it)")
    p.add_argument("--final-grace", type=float, default=5.0, help="seconds a spent session waits for the last "
                                                                  "countersignature before its final receipt")
    p.add_argument("--rate", type=float, default=1000.0, help="calls per second per buyer key (safety rule)")
    p.add_argument("--rate-burst", type=int, default=1000, help="burst of the per-buyer rate")
    p.add_argument("--deny-pattern", action="append", help="another deny pattern (regex) for every asset")
    p.add_argument("--bare-listing", action="append", help="benchmark only: serve this listing with no metering, "
                                                            "receipts, countersignatures, storage or safety checks")
    p.set_defaults(func=bind(cmd_serve))


def add_commands(sub: Any, *, load: Callable[[argparse.Namespace], Any],
                 home: Callable[[argparse.Namespace], Path]) -> None:
    """Add ``aim-node compute …`` to the node's parser."""

    def bind(func: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
        return lambda args: func(args, load, home(args))

    compute = sub.add_parser("compute", help="compute assets: register, serve, invoke (metered sessions)")
    actions = compute.add_subparsers(dest="compute_command", required=True)
    reg = actions.add_parser("register", help="register a compute manifest for a published listing")
    reg.add_argument("manifest", help="the asset's manifest (JSON; see docs/protocol.md, Compute)")
    reg.add_argument("--listing", required=True, help="the listing id the hub gave when it was published")
    reg.add_argument("--no-import-check", action="store_true", help="do not import the entry point now")
    reg.set_defaults(func=bind(cmd_register))
    _serve_parser(actions, bind)
    inv = actions.add_parser("invoke", help="buyer: call a compute asset at the seller's node (one session)")
    inv.add_argument("--token", required=True, help="file holding the invoke token")
    inv.add_argument("--key", required=True, help="the buyer key file whose jkt the token names")
    inv.add_argument("--input", help="the call's input (JSON)")
    inv.add_argument("--input-file", help="read the call's input (JSON) from this file")
    inv.add_argument("--repeat", type=int, default=1, help="call this many times in the session")
    inv.add_argument("--seller", help="host:port of the seller's node (default: the token's endpoint)")
    inv.add_argument("--hub-key", action="append", help="trusted hub signing key, [KID=]z6Mk… (repeatable)")
    inv.add_argument("--hub", help="hub URL to read its signing key from instead")
    inv.add_argument("--receipt", help="write the last (or final) receipt here")
    inv.add_argument("--resume", help="a receipt file from an earlier run of this session")
    inv.add_argument("--keep-open", action="store_true", help="disconnect without closing the session")
    inv.set_defaults(func=bind(cmd_invoke))
