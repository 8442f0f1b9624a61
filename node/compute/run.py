"""Running the compute server as ``aim-node compute serve`` does: workers, store, listen, stop on a signal."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.compute.registry import ComputeAsset
from node.compute.safety import SafetyCheck
from node.compute.server import ComputeConfig, ComputeServer
from node.compute.store import SessionStore
from node.compute.workers import WorkerPool
from node.delivery.run import stop_on_signals


def paths(home: Path) -> tuple[Path, Path]:
    """``(compute.sqlite, outbox.sqlite)`` in the node's home: the outbox is the node's one
    outbox, the one ``aim-node serve``'s uplink delivers (one hash chain per device at the hub;
    appends take SQLite's write lock, so the two server processes share the file safely)."""
    return home / "compute.sqlite", home / "outbox.sqlite"


async def serve(config: ComputeConfig, assets: dict[str, ComputeAsset], home: Path, host: str, port: int, *,
                workers: int = 2, max_queue: int = 256, safety_options: dict[str, Any] | None = None,
                ready: Callable[[str, int, ComputeServer], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop``, when ``aim-node serve`` runs it beside delivery);
    ``ready(host, port, server)`` once listening."""
    db, outbox = paths(home)
    store = SessionStore(db, outbox)
    # The seller's code runs without the keystore passphrase in its environment.
    worker_env = {name: value for name, value in os.environ.items() if name != "AIM_NODE_PASSPHRASE"}
    pool = WorkerPool({listing: asset.worker_spec() for listing, asset in assets.items()}, size=workers,
                      max_queue=max_queue, env=worker_env)
    safety = SafetyCheck({listing: asset.manifest for listing, asset in assets.items()}, **(safety_options or {}))
    stop = stop if stop is not None else stop_on_signals()
    await pool.start()
    server = ComputeServer(config, assets, store, pool, safety)
    listener = await server.start(host, port)
    bound_host, bound_port = listener.sockets[0].getsockname()[:2]
    if ready is not None:
        ready(bound_host, bound_port, server)
    try:
        await stop.wait()
    finally:
        listener.close()
        try:
            await asyncio.wait_for(listener.wait_closed(), 5.0)
        except TimeoutError:
            pass
        await server.close()


def announce(host: str, port: int, server: ComputeServer) -> None:
    """The line ``aim-node compute serve`` prints once it listens (tests wait for it)."""
    print(json.dumps({"listening": f"{host}:{port}", "assets": sorted(server.assets),
                      "sessions_open": len(server.sessions)}), flush=True)
    sys.stdout.flush()
