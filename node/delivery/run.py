"""Running the delivery server as ``aim-node serve`` does: listen, run the uplink, stop on a signal."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from domain.model.keys import VerifyKey
from node.delivery.server import DeliveryServer, ServerConfig
from node.delivery.store import DeliveryStore
from node.delivery.uplink import UplinkThread
from node.outbox import Outbox


def parse_hub_keys(values: list[str]) -> dict[str, VerifyKey]:
    """``KID=z6Mk…`` or ``z6Mk…`` (kid = the key's ``key_id``) into the trusted hub keys."""
    keys: dict[str, VerifyKey] = {}
    for value in values:
        kid, sep, text = value.partition("=")
        key = VerifyKey.from_multibase(text if sep else kid)
        keys[kid if sep else key.key_id] = key
    return keys


def hub_keys_from_discovery(document: dict) -> dict[str, VerifyKey]:
    """The hub's signing key from its ``/.well-known/ai-market.json``."""
    signing = document["signing_key"]
    return {signing["kid"]: VerifyKey.from_multibase(signing["public_key"])}


async def serve(config: ServerConfig, home: Path, host: str, port: int, *,
                uplink: UplinkThread | None = None, server_class: type[DeliveryServer] = DeliveryServer,
                ready: Callable[[str, int], None] | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop``). ``ready(host, port)`` is called once listening;
    ``uplink`` (heartbeats, hub keys, outbox delivery) runs on its own thread meanwhile."""
    store, outbox = DeliveryStore(home / "delivery.sqlite"), Outbox(home / "outbox.sqlite")
    stop = stop if stop is not None else stop_on_signals()
    server = await server_class(config, store, outbox).start(host, port)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    if uplink is not None:
        uplink.start()
    if ready is not None:
        ready(bound_host, bound_port)
    try:
        await stop.wait()
    finally:
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 5.0)
        except TimeoutError:
            pass
        if uplink is not None:
            await asyncio.to_thread(uplink.stop)
        store.close()
        outbox.close()


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (one per process: a second handler would replace the first)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def announce(host: str, port: int) -> None:
    """The line ``aim-node serve`` prints once it listens (tests wait for it)."""
    print(json.dumps({"listening": f"{host}:{port}"}), flush=True)
    sys.stdout.flush()
