"""``aim-node``: the self-hosted node agent (keys, enrollment, profiling, publishing, delivery).

The passphrase comes from ``AIM_NODE_PASSPHRASE``, ``--passphrase-file`` or a prompt.
The node's files live in ``--home`` (default ``AIM_NODE_HOME`` or ``~/.aim-node``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from domain.model.blocks import DEFAULT_BLOCK_SIZE
from domain.model.device import enrollment_message, rotation_message
from domain.model.errors import InvalidInput, MarketError
from domain.model.keys import SigningKey, b64url
from node import keystore as ks
from node.compute import commands as compute_commands
from node.delivery import commands as delivery_commands
from node.hub_client import HubClient, device_token

EPILOG = """
first run:
  aim-node init                                   # make the device keys (asks a passphrase)
  aim-node enroll --hub http://127.0.0.1:8080 --api-key aim_...   # register them with the hub
  aim-node whoami                                 # a request signed by the device key

delivery:
  aim-node publish REPORT --file data.csv ...     # the listing commits to the file's blocks
  aim-node serve                                  # serve registered files to token holders
  aim-node serve --compute-listen 127.0.0.1:9191  # ... and the registered compute assets too
  aim-node purchase-key --out buyer.jwk           # buyer: a key per purchase (give the hub its jkt)
  aim-node fetch --token t.jwt --key buyer.jwk --out data.csv --hub-key z6Mk...

buying:
  aim-node buy LISTING --channel CHANNEL --hub URL --api-key aim_... [--out data.csv]
  aim-node fetch PURCHASE --out data.csv          # a purchase bought on this node
"""


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home or os.environ.get("AIM_NODE_HOME") or Path.home() / ".aim-node")


def _keystore_path(args: argparse.Namespace) -> Path:
    return _home(args) / "keystore.json"


def _passphrase(args: argparse.Namespace, *, confirm: bool = False) -> str:
    if args.passphrase_file:
        return Path(args.passphrase_file).read_text().rstrip("\n")
    if os.environ.get("AIM_NODE_PASSPHRASE"):
        return os.environ["AIM_NODE_PASSPHRASE"]
    if not sys.stdin.isatty():
        raise InvalidInput("no passphrase: set AIM_NODE_PASSPHRASE or use --passphrase-file")
    first = getpass.getpass("keystore passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise InvalidInput("the passphrases differ")
    return first


def _kdf_limits() -> dict[str, int]:
    # Tests and demos may choose the cheap profile; real nodes keep the secure default.
    if os.environ.get("AIM_NODE_KDF_PROFILE") == "test":
        return {"ops_limit": ks.TEST_OPS_LIMIT, "mem_limit": ks.TEST_MEM_LIMIT}
    return {}


def _load(args: argparse.Namespace) -> ks.Keystore:
    return ks.load(_keystore_path(args), _passphrase(args))


def _enrolled(store: ks.Keystore) -> tuple[str, str]:
    if not store.device_id or not store.hub_url:
        raise InvalidInput("this node is not enrolled yet: run `aim-node enroll --hub URL --api-key KEY`")
    return store.device_id, store.hub_url


def _audience(client: HubClient) -> str:
    return client.request("GET", "/.well-known/ai-market.json")["hub_url"]


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_init(args: argparse.Namespace) -> int:
    store = ks.create(_keystore_path(args), _passphrase(args, confirm=True), overwrite=args.force,
                      **_kdf_limits())
    _print({"keystore": str(_keystore_path(args)), **store.public_info()})
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("AIM_API_KEY")
    if not api_key:
        raise InvalidInput("give the seller's API key with --api-key or AIM_API_KEY")
    passphrase = _passphrase(args)
    store = ks.load(_keystore_path(args), passphrase)
    client = HubClient(args.hub)
    me = client.request("GET", "/v1/me", bearer=api_key)
    challenge = client.request("POST", "/v1/devices/challenges", {}, bearer=api_key)["challenge"]
    fields = {"challenge": challenge, "name": args.name, "endpoint": args.endpoint,
              "public_key": store.signing_key.verify_key.to_multibase(),
              "kx_public_key": store.kx_key.public_key.to_multibase()}
    message = enrollment_message(account_id=me["account"]["id"], **fields)
    device = client.request("POST", "/v1/devices", {**fields, "signature": b64url(store.signing_key.sign(message))},
                            bearer=api_key)
    ks.save(store.with_enrollment(device_id=device["id"], hub_url=args.hub.rstrip("/")), _keystore_path(args),
            passphrase, **_kdf_limits())
    (_home(args) / "endpoint").write_text(args.endpoint + "\n")
    _print({"enrolled": True, "device_id": device["id"], "kid": device["kid"], "hub": args.hub})
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    store = _load(args)
    device_id, hub_url = _enrolled(store)
    client = HubClient(hub_url)
    token = device_token(store.signing_key, device_id=device_id, hub_url=_audience(client), now_s=int(time.time()))
    _print(client.request("GET", "/v1/devices/me", bearer=token))
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    passphrase = _passphrase(args)
    store = ks.load(_keystore_path(args), passphrase)
    device_id, hub_url = _enrolled(store)
    client = HubClient(hub_url)
    new_key = SigningKey.generate()
    public_key = new_key.verify_key.to_multibase()
    kx_public_key = store.kx_key.public_key.to_multibase()
    signature = store.signing_key.sign(rotation_message(device_id=device_id, public_key=public_key,
                                                        kx_public_key=kx_public_key))
    token = device_token(store.signing_key, device_id=device_id, hub_url=_audience(client), now_s=int(time.time()))
    device = client.request("POST", f"/v1/devices/{device_id}/keys",
                            {"public_key": public_key, "kx_public_key": kx_public_key,
                             "signature": b64url(signature)}, bearer=token)
    rotated = store.rotated(new_key, rotated_at=datetime.now(UTC).isoformat())
    ks.save(rotated, _keystore_path(args), passphrase, **_kdf_limits())
    _print({"rotated": True, "kid": device["kid"], "previous_key_valid_for_h": 24})
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from node.profiling import profile_manifest, profile_path, render_text

    report = profile_manifest(args.path) if args.manifest else profile_path(args.path)
    out = Path(args.out or (Path(args.path).name + ".profile.json"))
    out.write_text(json.dumps(report, indent=2, sort_keys=True))
    print(render_text(report))
    print(f"\nreport written to {out}")
    return 0


def _device_client(args: argparse.Namespace) -> tuple[ks.Keystore, str, HubClient, str]:
    store = _load(args)
    device_id, hub_url = _enrolled(store)
    client = HubClient(hub_url)
    token = device_token(store.signing_key, device_id=device_id, hub_url=_audience(client), now_s=int(time.time()))
    return store, device_id, client, token


def _report_listing(args: argparse.Namespace) -> dict[str, Any]:
    from node.publishing import delivery_commitment, listing_from_report

    report = json.loads(Path(args.report).read_text())
    delivery = delivery_commitment(args.file, args.block_size) if args.file else None
    return listing_from_report(report, price_minor=args.price, currency=args.currency, licence=args.licence,
                               category=args.category, delivery=delivery)


def _register(args: argparse.Namespace, listing_id: str, listing: dict[str, Any]) -> None:
    from node.publishing import register_object

    if args.file:
        register_object(_home(args), listing_id, args.file, block_size=args.block_size, root=args.data_root,
                        expected=listing["delivery"])


def cmd_publish(args: argparse.Namespace) -> int:
    from node.publishing import publish_credential

    listing = _report_listing(args)
    store, _, client, token = _device_client(args)
    credential = publish_credential(store.signing_key, listing, args.listing_key)
    published = client.request("POST", "/v1/listings", credential, bearer=token)
    _register(args, published["id"], listing)
    _print(published)
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from node.publishing import update_credential

    listing = _report_listing(args)
    store, _, client, token = _device_client(args)
    credential = update_credential(store.signing_key, args.listing_id, listing)
    updated = client.request("PUT", f"/v1/listings/{args.listing_id}", credential, bearer=token)
    _register(args, args.listing_id, listing)
    _print(updated)
    return 0


def cmd_delist(args: argparse.Namespace) -> int:
    from node.publishing import delist_credential

    store, _, client, token = _device_client(args)
    credential = delist_credential(store.signing_key, args.listing_id, args.reason or "")
    _print(client.request("DELETE", f"/v1/listings/{args.listing_id}", credential, bearer=token))
    return 0


def cmd_buy(args: argparse.Namespace) -> int:
    from node.delivery.buy import buy

    hub_url = args.hub or os.environ.get("AIM_HUB_URL")
    api_key = args.api_key or os.environ.get("AIM_API_KEY")
    if not hub_url:
        raise InvalidInput("give the hub with --hub URL or AIM_HUB_URL")
    if not api_key:
        raise InvalidInput("give the buyer's API key with --api-key or AIM_API_KEY")
    voucher = None
    if args.voucher_file:
        try:
            voucher = json.loads(Path(args.voucher_file).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read the voucher file: {exc}", param="voucher-file") from None
    bought = buy(HubClient(hub_url), args.listing_id, args.channel, bearer=api_key, home=_home(args), voucher=voucher)
    p = bought.purchase
    _print({"purchase_id": bought.purchase_id, "status": p["status"], "price_minor": p["price_minor"],
            "fee_minor": p["fee_minor"], "currency": p["currency"], "token_file": str(bought.token_path),
            "key_file": str(bought.key_path)})
    if not args.out:
        return 0
    fetch = argparse.Namespace(**{**vars(args), "purchase": bought.purchase_id, "token": None, "key": None})
    return int(delivery_commands.cmd_fetch(fetch, _load, _home(args)))


def _buy_arguments(sub: Any) -> None:
    buy = sub.add_parser("buy", help="buyer: buy a listing from a channel (the delivery token and its per-purchase "
                                     "key are kept under HOME/purchases); with --out, fetch it at once")
    buy.add_argument("listing_id", metavar="LISTING")
    buy.add_argument("--channel", required=True, help="the channel that pays (POST /v1/channels)")
    buy.add_argument("--hub", help="hub URL (or AIM_HUB_URL)")
    buy.add_argument("--api-key", help="the buyer's API key (or AIM_API_KEY)")
    buy.add_argument("--voucher-file", help="chain channels: a JSON {cumulative_minor, signature} voucher covering "
                                            "the channel's spend after this purchase")
    buy.add_argument("--out", help="fetch the object into this file right after buying")
    buy.add_argument("--seller", help="host:port of the seller's node (default: the token's endpoint)")
    buy.add_argument("--hub-key", action="append", help="trusted hub signing key, [KID=]z6Mk… (default: the hub's "
                                                        "discovery document)")
    buy.add_argument("--retries", type=int, default=8, help="reconnections after a drop (resumes)")
    buy.add_argument("--receipt", help="where to write the receipt and confirmation (OUT.receipt.json)")
    buy.add_argument("--no-progress", action="store_true", help="no progress bar")
    buy.add_argument("--no-report", action="store_true", help="do not report the confirmation to the hub")
    buy.set_defaults(func=cmd_buy)


def _offer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", help="the JSON report written by `aim-node profile`")
    parser.add_argument("--price", type=int, required=True, help="price in minor units (1999 = 19.99 USD)")
    parser.add_argument("--currency", required=True, help="currency or token code, e.g. USD, USDC")
    parser.add_argument("--licence", required=True, help="licence identifier, e.g. CC-BY-4.0")
    parser.add_argument("--category", required=True, help="category slug, e.g. health")
    parser.add_argument("--file", help="the file buyers receive: its block hashes go into the signed listing "
                                       "and it is registered for `aim-node serve`")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="delivery block size (8 MiB)")
    parser.add_argument("--data-root", help="folder the file must stay inside (default: its own folder)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aim-node", description="The aimarket node agent.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", help="node folder (default $AIM_NODE_HOME or ~/.aim-node)")
    parser.add_argument("--passphrase-file", help="read the keystore passphrase from this file")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the device keys (Ed25519 + X25519) in a new keystore")
    init.add_argument("--force", action="store_true", help="replace an existing keystore (its keys are lost)")
    init.set_defaults(func=cmd_init)
    enroll = sub.add_parser("enroll", help="register this node's keys with a hub")
    enroll.add_argument("--hub", required=True, help="hub URL, e.g. http://127.0.0.1:8080")
    enroll.add_argument("--api-key", help="the seller's API key (or AIM_API_KEY)")
    enroll.add_argument("--name", default="my-node", help="a name for this node")
    enroll.add_argument("--endpoint", default="http://127.0.0.1:9090", help="where buyers reach this node")
    enroll.set_defaults(func=cmd_enroll)
    sub.add_parser("whoami", help="ask the hub who we are, with a device-signed token").set_defaults(
        func=cmd_whoami)
    sub.add_parser("rotate-key", help="new device key, vouched for by the old one (24 h overlap)").set_defaults(
        func=cmd_rotate_key)
    profile = sub.add_parser("profile", help="profile a dataset (CSV/Parquet/JSONL file or folder) locally")
    profile.add_argument("path")
    profile.add_argument("--manifest", action="store_true", help="PATH is a model/pipeline manifest")
    profile.add_argument("--out", help="where to write the JSON report")
    profile.set_defaults(func=cmd_profile)
    publish = sub.add_parser("publish", help="publish a profile report's metadata as a signed listing")
    _offer_arguments(publish)
    publish.add_argument("--listing-key", help="your name for this listing (default: the content hash)")
    publish.set_defaults(func=cmd_publish)
    update = sub.add_parser("update", help="replace a listing's metadata and price (signed)")
    update.add_argument("listing_id")
    _offer_arguments(update)
    update.set_defaults(func=cmd_update)
    delist = sub.add_parser("delist", help="withdraw a listing from the catalogue (signed)")
    delist.add_argument("listing_id")
    delist.add_argument("--reason", help="a short reason, kept in the log")
    delist.set_defaults(func=cmd_delist)
    delivery_commands.add_commands(sub, load=_load, home=_home)
    _buy_arguments(sub)
    compute_commands.add_commands(sub, load=_load, home=_home)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MarketError as exc:
        print(f"error [{exc.code}]: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
