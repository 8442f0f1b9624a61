"""Running the delivery server as ``aim-node serve`` does: listen, pump the outbox, stop on a signal."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from domain.model.keys import VerifyKey
from node.delivery.server import DeliveryServer, ServerConfig, wall_ms
from node.delivery.store import DeliveryStore
from node.outbox import Entry, Outbox

OUTBOX_PUMP_S = 2.0


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


async def _pump(outbox: Outbox, sink: Callable[[Entry], None] | None, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if sink is not None:
            outbox.deliver(sink, wall_ms())
        try:
            await asyncio.wait_for(stop.wait(), OUTBOX_PUMP_S)
        except TimeoutError:
            pass


async def serve(config: ServerConfig, home: Path, host: str, port: int, *,
                sink: Callable[[Entry], None] | None = None, server_class: type[DeliveryServer] = DeliveryServer,
                ready: Callable[[str, int], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM. ``ready(host, port)`` is called once listening."""
    store, outbox = DeliveryStore(home / "delivery.sqlite"), Outbox(home / "outbox.sqlite")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await server_class(config, store, outbox).start(host, port)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    if ready is not None:
        ready(bound_host, bound_port)
    pump = asyncio.create_task(_pump(outbox, sink, stop))
    try:
        await stop.wait()
    finally:
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 5.0)
        except TimeoutError:
            pass
        await pump
        store.close()
        outbox.close()


def announce(host: str, port: int) -> None:
    """The line ``aim-node serve`` prints once it listens (tests wait for it)."""
    print(json.dumps({"listening": f"{host}:{port}"}), flush=True)
    sys.stdout.flush()
