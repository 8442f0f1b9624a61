"""Credentials tests run with the network cut: any socket connection or name lookup fails the
test, and pyld's default (fetching) document loader raises if it is ever reached."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from pyld import jsonld

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load_vectors(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


class NetworkUsed(AssertionError):
    """A credentials code path tried to reach the network."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NetworkUsed(f"network access attempted: {args[:2]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(jsonld, "_default_document_loader", refuse)
