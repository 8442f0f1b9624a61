"""``aim-node`` whose delivery server corrupts block 1 after its own check (a lying seller)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from node.cli import main
from node.delivery import commands
from node.delivery.run import serve
from node.delivery.server import DeliveryServer


class WrongBlockServer(DeliveryServer):
    def outgoing_block(self, index: int, data: bytes) -> bytes:
        if index != 1:
            return data
        return bytes([data[0] ^ 0x01]) + data[1:]


if __name__ == "__main__":
    commands.serve = functools.partial(serve, server_class=WrongBlockServer)
    raise SystemExit(main())
