"""The delivery commands of ``aim-node``: ``serve``, ``fetch``, ``purchase-key`` and ``outbox``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domain.model.delivery import jwk_thumbprint
from domain.model.errors import InvalidInput, MarketError
from domain.model.keys import SigningKey, VerifyKey
from node.delivery.keys import save_buyer_key
from node.delivery.run import announce, hub_keys_from_discovery, parse_hub_keys, serve, stop_on_signals
from node.delivery.server import ServerConfig
from node.delivery.uplink import HubKeys, Uplink, UplinkThread, wall_ms
from node.delivery.wire import parse_endpoint
from node.hub_client import HubClient
from node.outbox import Outbox

DEFAULT_LISTEN = "127.0.0.1:9090"


def _hub_keys(args: argparse.Namespace, hub_url: str | None) -> dict[str, VerifyKey]:
    if args.hub_key:
        return parse_hub_keys(args.hub_key)
    url = getattr(args, "hub", None) or hub_url
    if not url:
        raise InvalidInput("give the hub's signing key with --hub-key (or --hub URL to read it from the hub)")
    return hub_keys_from_discovery(HubClient(url).request("GET", "/.well-known/ai-market.json"))


def _listen(args: argparse.Namespace, home: Path) -> tuple[str, int]:
    if args.listen:
        return parse_endpoint(args.listen)
    saved = home / "endpoint"
    return parse_endpoint(saved.read_text().strip() if saved.exists() else DEFAULT_LISTEN)


def _serve_keys(args: argparse.Namespace, home: Path, uplink: Uplink | None) -> HubKeys:
    """Pinned ``--hub-key``s, else the hub's discovery document, else the keys cached from the
    last one (``<home>/hub_keys.json``): a node starts, and keeps its traces, while the hub is away."""
    keys = HubKeys(parse_hub_keys(args.hub_key) if args.hub_key else {}, cache=home / "hub_keys.json")
    if not keys.pinned and uplink is not None:
        try:
            keys.learn(uplink.discover(), wall_ms())
        except MarketError as exc:
            print(json.dumps({"uplink": "hub_unavailable_at_start", "code": exc.code}), file=sys.stderr)
    if not keys.trusted(wall_ms()):
        if uplink is None:
            raise InvalidInput("no hub key: give --hub-key (--offline never asks the hub)")
        print(json.dumps({"uplink": "no_hub_key_yet", "detail": "tokens are refused until the hub is reached"}),
              file=sys.stderr)
    return keys


def cmd_serve(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any], home: Path) -> int:
    store = load(args)
    if not store.device_id:
        raise InvalidInput("this node is not enrolled yet: run `aim-node enroll` first")
    hub_url = args.hub or store.hub_url
    if not args.offline and not hub_url:
        raise InvalidInput("no hub to report to: give --hub URL, or run with --offline")
    link = None if args.offline else Uplink(HubClient(hub_url, timeout_s=10.0), device_id=store.device_id,
                                            key=store.signing_key)
    hub_keys = _serve_keys(args, home, link)
    keys = [store.signing_key] + ([store.previous_signing_key] if store.previous_signing_key else [])
    config = ServerConfig(device_id=store.device_id, device_keys=keys, hub_keys=hub_keys.trusted(wall_ms()),
                          max_connections=args.max_connections, max_per_client=args.max_per_client,
                          idle_timeout_s=args.idle_timeout, max_transfer_s=args.max_transfer,
                          max_resumes=args.max_resumes, max_rate_bps=args.max_rate)
    compute = _compute(args, home, config) if args.compute_listen else None
    uplink = None
    if link is not None:
        def on_keys(trusted: dict[str, VerifyKey]) -> None:
            config.hub_keys = trusted  # one assignment: each new connection reads the current dict
            if compute is not None:
                compute[0].hub_keys = trusted

        uplink = UplinkThread(home / "outbox.sqlite", link, hub_keys=hub_keys, on_keys=on_keys,
                              heartbeat_s=args.heartbeat, refresh_s=args.keys_refresh, pump_s=args.pump)
    host, port = _listen(args, home)
    asyncio.run(_serve_all(config, home, host, port, uplink, compute, args.compute_listen))
    return 0


def _compute(args: argparse.Namespace, home: Path, config: ServerConfig) -> tuple[Any, dict[str, Any]]:
    """The compute server's config (``aim-node compute serve``'s defaults) and the registered assets."""
    from node.compute.commands import registered_assets
    from node.compute.server import ComputeConfig

    assets = registered_assets(home)
    return ComputeConfig(device_id=config.device_id, device_keys=config.device_keys, hub_keys=config.hub_keys), assets


async def _serve_all(config: ServerConfig, home: Path, host: str, port: int, uplink: UplinkThread | None,
                     compute: tuple[Any, dict[str, Any]] | None, compute_listen: str | None) -> None:
    """Delivery, and with ``--compute-listen`` the compute assets beside it in the same process
    (one stop for both: SIGINT/SIGTERM, or either server failing)."""
    if compute is None:
        await serve(config, home, host, port, uplink=uplink, ready=announce)
        return
    from node.compute.run import announce as compute_announce
    from node.compute.run import serve as compute_serve

    stop = stop_on_signals()

    async def until_stop(server: Any) -> None:
        try:
            await server
        finally:
            stop.set()

    compute_host, compute_port = parse_endpoint(compute_listen or "")
    await asyncio.gather(
        until_stop(serve(config, home, host, port, uplink=uplink, ready=announce, stop=stop)),
        until_stop(compute_serve(compute[0], compute[1], home, compute_host, compute_port, ready=compute_announce,
                                 stop=stop)))


class ProgressBar:
    """A one-line progress bar on stderr (no dependency: pyproject and its lock stay as they are)."""

    WIDTH = 30

    def __init__(self, stream: Any) -> None:
        self.stream, self.started = stream, time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        filled = int(share * self.WIDTH)
        rate = done / max(time.monotonic() - self.started, 1e-6) / 2**20
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:6.1%} "
                          f"{done / 2**20:,.1f}/{total / 2**20:,.1f} MiB verified, {rate:,.1f} MiB/s")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def cmd_fetch(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any], home: Path) -> int:
    from node.delivery.buy import fetch_inputs
    from node.delivery.client import fetch

    token, buyer_key, hub_url = fetch_inputs(home, args.purchase, args.token, args.key)
    hub_keys = _hub_keys(args, hub_url)
    bar = ProgressBar(sys.stderr) if not args.no_progress and sys.stderr.isatty() else None
    try:
        result = fetch(token, args.out, buyer_key, hub_keys, seller=args.seller, retries=args.retries, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    proof = Path(args.receipt or f"{args.out}.receipt.json")
    proof.write_text(json.dumps({"receipt": result.receipt, "confirmation": result.confirmation}, indent=2) + "\n")
    outcome = result.receipt["credentialSubject"]["outcome"] if result.receipt else None
    print(json.dumps({"fetched": str(result.path), "size_bytes": result.size_bytes, "attempts": result.attempts,
                      "receipt": str(proof), "outcome": outcome,
                      "reported": _report_confirmation(args, load, home, result.confirmation)}, indent=2))
    return 0


def _report_confirmation(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any], home: Path,
                         confirmation: dict[str, Any]) -> dict[str, Any]:
    """The buyer's node reports its confirmation like any trace: into its own outbox, then one
    delivery attempt (what is not taken now goes with the next ``fetch`` or ``outbox deliver``)."""
    if args.no_report or not (home / "keystore.json").exists():
        return {"reported": False, "reason": "--no-report" if args.no_report else "no node keystore in --home"}
    try:
        store = load(args)
    except MarketError as exc:  # the object is fetched and verified: reporting is not worth failing it
        return {"reported": False, "reason": f"{exc.code}: {exc.detail}"}
    hub_url = args.hub or store.hub_url
    if not store.device_id or not hub_url:
        return {"reported": False, "reason": "this node is not enrolled with a hub"}
    outbox = Outbox(home / "outbox.sqlite")
    try:
        outbox.append("confirmation", confirmation, wall_ms())
        link = Uplink(HubClient(hub_url, timeout_s=10.0), device_id=store.device_id, key=store.signing_key)
        outbox.deliver_batches(link.send, wall_ms())
        status = outbox.status()
    finally:
        outbox.close()
    return {"reported": status["pending"] == 0, "outbox": status}


def cmd_outbox(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any], home: Path) -> int:
    outbox = Outbox(home / "outbox.sqlite")
    try:
        if args.action == "deliver":
            store = load(args)
            hub_url = args.hub or store.hub_url
            if not store.device_id or not hub_url:
                raise InvalidInput("this node is not enrolled with a hub: run `aim-node enroll` first")
            if args.retry:
                outbox.unpark()
            link = Uplink(HubClient(hub_url, timeout_s=10.0), device_id=store.device_id, key=store.signing_key)
            outbox.deliver_batches(link.send, wall_ms())
        print(json.dumps(outbox.status(), indent=2))
        return 1 if outbox.status()["parked"] else 0
    finally:
        outbox.close()


def cmd_purchase_key(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any], home: Path) -> int:
    key = SigningKey.generate()
    save_buyer_key(key, args.out)
    print(json.dumps({"key_file": args.out, "jkt": jwk_thumbprint(key.verify_key),
                      "public_key": key.verify_key.to_multibase()}, indent=2))
    return 0


def add_commands(sub: Any, *, load: Callable[[argparse.Namespace], Any],
                 home: Callable[[argparse.Namespace], Path]) -> None:
    """Add the delivery sub-commands to ``aim-node``'s parser."""

    def bind(func: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
        return lambda args: func(args, load, home(args))

    serve_p = sub.add_parser("serve", help="serve registered files to holders of delivery tokens (P2P)")
    serve_p.add_argument("--listen", help="host:port (default: the endpoint given at enrollment, or 127.0.0.1:9090)")
    serve_p.add_argument("--hub-key", action="append", help="trusted hub signing key, [KID=]z6Mk… (repeatable; "
                                                             "default: the hub's discovery document, refreshed, "
                                                             "else the keys cached from it)")
    serve_p.add_argument("--max-connections", type=int, default=64)
    serve_p.add_argument("--max-per-client", type=int, default=8, help="connections per client address")
    serve_p.add_argument("--idle-timeout", type=float, default=30.0, help="seconds a peer may stay silent")
    serve_p.add_argument("--max-transfer", type=float, default=6 * 3600.0, help="seconds one transfer may last")
    serve_p.add_argument("--max-resumes", type=int, default=16)
    serve_p.add_argument("--max-rate", type=int, help="bytes per second per transfer (default: unlimited)")
    serve_p.add_argument("--hub", help="hub to report traces to (default: the enrolled hub)")
    serve_p.add_argument("--offline", action="store_true", help="never contact the hub: traces stay in the outbox, "
                                                                 "no heartbeats; hub keys from --hub-key or the cache")
    serve_p.add_argument("--heartbeat", type=float, default=300.0, help="seconds between heartbeat traces (0: none)")
    serve_p.add_argument("--keys-refresh", type=float, default=300.0,
                         help="seconds between reads of the hub's keys from its discovery document")
    serve_p.add_argument("--pump", type=float, default=2.0, help="seconds between outbox delivery rounds")
    serve_p.add_argument("--compute-listen", metavar="HOST:PORT",
                         help="also serve the compute assets registered in HOME (`aim-node compute register`) on "
                              "HOST:PORT, in this process, with `aim-node compute serve`'s defaults")
    serve_p.set_defaults(func=bind(cmd_serve))
    fetch_p = sub.add_parser("fetch", help="buyer: fetch a purchased object straight from the seller's node")
    fetch_p.add_argument("purchase", nargs="?", help="a purchase made by `aim-node buy` on this node (its token "
                                                     "and key are kept under HOME/purchases); or --token and --key")
    fetch_p.add_argument("--token", help="file holding the delivery token (instead of PURCHASE)")
    fetch_p.add_argument("--out", required=True, help="where to write the object (OUT.partial while running)")
    fetch_p.add_argument("--key", help="the per-purchase key file (`aim-node purchase-key`), with --token")
    fetch_p.add_argument("--seller", help="host:port of the seller's node (default: the token's endpoint)")
    fetch_p.add_argument("--hub-key", action="append", help="trusted hub signing key, [KID=]z6Mk… (repeatable)")
    fetch_p.add_argument("--hub", help="hub URL to read its signing key from instead (default for PURCHASE: the "
                                       "hub it was bought from)")
    fetch_p.add_argument("--retries", type=int, default=8, help="reconnections after a drop (resumes)")
    fetch_p.add_argument("--receipt", help="where to write the receipt and confirmation (OUT.receipt.json)")
    fetch_p.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch_p.add_argument("--no-report", action="store_true",
                         help="do not report the confirmation to the hub (default: reported when --home holds an "
                              "enrolled node, through its outbox)")
    fetch_p.set_defaults(func=bind(cmd_fetch))
    key_p = sub.add_parser("purchase-key", help="buyer: make a per-purchase key; give the hub its jkt")
    key_p.add_argument("--out", required=True, help="key file to create (mode 0600)")
    key_p.set_defaults(func=bind(cmd_purchase_key))
    outbox_p = sub.add_parser("outbox", help="the traces waiting for the hub: status, or deliver now; exits 1 "
                                             "while the outbox is parked at an entry the hub refused")
    outbox_p.add_argument("action", choices=["status", "deliver"])
    outbox_p.add_argument("--retry", action="store_true", help="deliver: try a parked (refused) entry again")
    outbox_p.add_argument("--hub", help="deliver: the hub (default: the enrolled hub)")
    outbox_p.set_defaults(func=bind(cmd_outbox))
