"""A node as the trace tests need it: an enrolled device, its outbox chain, its envelopes."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from domain.model import envelope as env
from domain.model.jcs import canonical_json
from domain.model.keys import SigningKey
from tests.helpers import enroll, seller_with_key

HUB = "http://hub.test"
RECORDED = "domain.model.traces:Trace.TraceRecorded"
SIGNAL = "domain.model.traces:Signal.BehaviourSignal"


def events(market: Any, topic: str) -> list[Any]:
    """Every stored event of ``topic``, decoded, in log order."""
    found, start = [], 1
    while True:
        batch = market.recorder.select_notifications(start=start, limit=500, topics=[topic])
        found += [market.mapper.to_domain_event(n) for n in batch]
        if len(batch) < 500:
            return found
        start = batch[-1].id + 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class SimNode:
    """An enrolled device and the chain of its outbox, without the file."""

    device_id: str
    key: SigningKey
    entries: list[env.Entry] = field(default_factory=list)

    def append(self, kind: str, body: dict[str, Any], created_ms: int | None = None) -> env.Entry:
        prev = bytes.fromhex(self.entries[-1].entry_hash) if self.entries else env.GENESIS
        seq, created = len(self.entries) + 1, now_ms() if created_ms is None else created_ms
        digest = env.entry_hash(prev, seq, kind, canonical_json(body), created).hex()
        entry = env.Entry(seq, kind, body, prev.hex(), digest, created)
        self.entries.append(entry)
        return entry

    def heartbeat(self, created_ms: int | None = None) -> env.Entry:
        return self.append("heartbeat", {"started_ms": 0, "uptime_s": len(self.entries), "outbox_pending": 0},
                           created_ms)

    def envelope(self, entry: env.Entry, *, sent_ms: int | None = None, key: SigningKey | None = None,
                 nonce: str | None = None, audience: str = HUB, device_id: str | None = None) -> dict[str, Any]:
        return env.issue_envelope(entry, device_id=device_id or self.device_id, audience=audience,
                                  key=key or self.key, sent_ms=now_ms() if sent_ms is None else sent_ms,
                                  nonce=nonce or secrets.token_urlsafe(16))


def enrolled_node(client: Any, seller: dict[str, Any] | None = None) -> tuple[SimNode, dict[str, Any]]:
    seller = seller or seller_with_key(client)
    device = enroll(client, seller)
    return SimNode(device["id"], device["key"]), {**device, "seller": seller}
