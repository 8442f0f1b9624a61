"""The seller's node writes a refusal to its outbox when a token bound here is refused before the
transfer (another buyer key, an expired token): only for the hub's own tokens addressed to this
node, once a minute per token, key and code."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from domain.model.keys import SigningKey
from node.delivery.client import fetch_async
from node.delivery.server import DeliveryServer, ServerConfig
from node.delivery.store import DeliveryStore
from node.outbox import Outbox
from tests.delivery.rawclient import attempt
from tests.delivery.world import DEVICE_ID, World


def test_refusals_of_a_bound_token_before_the_transfer_go_to_the_outbox(tmp_path: Path) -> None:
    world = World(tmp_path)
    clock = {"offset_ms": 0}
    store, outbox = DeliveryStore(world.home / "delivery.sqlite"), Outbox(world.home / "outbox.sqlite")
    config = ServerConfig(device_id=DEVICE_ID, device_keys=[world.device_key], hub_keys=world.hub_keys)

    def now_ms() -> int:
        return time.time_ns() // 1_000_000 + clock["offset_ms"]

    async def main() -> dict[str, str]:
        server = DeliveryServer(config, store, outbox, clock_ms=now_ms)
        listening = await server.start("127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        token = world.token()
        outcomes: dict[str, str] = {}
        try:
            await fetch_async(token, tmp_path / "out.bin", world.buyer_key, world.hub_keys,
                              seller=f"127.0.0.1:{port}", retries=0)
            thief = SigningKey.generate()
            outcomes["another key"] = await attempt(port, token, thief)
            outcomes["the same again"] = await attempt(port, token, thief)
            forged = World(tmp_path / "forger").token()  # same jti, signed by a key the node does not trust
            outcomes["a forged token"] = await attempt(port, forged, thief)
            fresh = world.token(jti="token-0000000000000002")  # never bound here
            outcomes["an unbound token"] = await attempt(port, fresh, thief)
            clock["offset_ms"] = 2 * 3600 * 1000  # past exp (1 h) + skew
            outcomes["expired"] = await attempt(port, token, world.buyer_key)
        finally:
            listening.close()
            await listening.wait_closed()
        return outcomes

    outcomes = asyncio.run(main())
    assert outcomes == {"another key": "delivery_cnf_mismatch", "the same again": "delivery_cnf_mismatch",
                        "a forged token": "delivery_unknown_kid", "an unbound token": "delivery_cnf_mismatch",
                        "expired": "delivery_token_expired"}
    refusals = [e.body for e in outbox.entries(kind="refusal")]
    assert [(r["jti"], r["code"]) for r in refusals] == [("token-0000000000000001", "delivery_cnf_mismatch"),
                                                         ("token-0000000000000001", "delivery_token_expired")]
    assert refusals[1]["jkt"] != refusals[0]["jkt"] and refusals[0]["purchase_id"] == "purchase-1"
    assert [e.kind for e in outbox.entries()][:3] == ["redemption", "confirmation", "receipt"]
    assert outbox.verify_chain() == 5
    store.close()
    outbox.close()
