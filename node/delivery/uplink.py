"""The node's uplink: the outbox delivered to the hub as signed traces, heartbeats, hub keys kept fresh.

The outbox is the node's one file: the delivery server's entries and the compute server's
(``invoke_*``, appended by ``aim-node compute serve`` from another process) go out in one
chain, so a compute session reaches the hub only while ``aim-node serve`` runs.

:class:`Uplink` wraps each due outbox entry in a fresh envelope (``domain.model.envelope``: the
device key signs, a new 128-bit nonce and the send time each attempt) and POSTs batches to
``/v1/traces`` under a fresh device token. The hub's answer decides, per entry
(``node/outbox.py`` keeps the entries and applies it):

* 200 (``recorded`` or ``duplicate``): taken.
* no answer, 5xx, ``conflict``, or any code not listed below: kept, retried with back-off
  (1 s doubling to 5 min); a code that may come from a stale view of the hub
  (``trace_wrong_audience``, a device-token refusal) also re-reads the discovery document.
* ``trace_chain_gap``: the hub lacks earlier entries; delivery resumes from its ``expected_seq``.
* :data:`PERMANENT` codes: the entry is refused for good; the outbox parks there with the code
  (``aim-node outbox status`` shows it, ``aim-node outbox retry`` or a restart of ``aim-node
  serve`` tries once more): no endless loop on an entry the hub will never take.

:class:`UplinkThread` is what ``aim-node serve`` runs beside the delivery server: it appends a
``heartbeat`` every ``heartbeat_s`` (uptime signal), refreshes the hub's signing keys from
``/.well-known/ai-market.json`` every ``refresh_s`` (a hub key rotation does not stop
deliveries: keys seen within the last 25 h stay trusted, the hub honours its previous key 24 h),
and delivers the outbox every ``pump_s``. It has its own outbox connection, so a slow hub never
holds up the server's event loop.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domain.model import envelope as env
from domain.model.errors import MarketError
from domain.model.keys import SigningKey, VerifyKey
from node.delivery.trace_context import batch_traceparent
from node.hub_client import HubClient, HubError, device_token
from node.outbox import BatchFailed, Entry, EntryRefused, Outbox, ResumeFrom

DISCOVERY = "/.well-known/ai-market.json"
TRACES = "/v1/traces"
BATCH_SIZE = 16
HUB_KEY_MEMORY_MS = 25 * 3600 * 1000
# Refusals no retry can change: the entry, the device or the chain is wrong for this hub.
PERMANENT = frozenset({
    "trace_envelope_invalid", "trace_entry_hash_mismatch", "trace_signature_invalid", "trace_chain_fork",
    "foreign_device", "device_not_enrolled", "device_suspended", "key_expired", "forbidden",
    "invalid_input", "malformed_body", "nesting_too_deep", "invalid_text", "payload_too_large",
})
STALE_VIEW = frozenset({"trace_wrong_audience", "token_invalid", "unauthenticated"})


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _note(event: str, **fields: Any) -> None:
    """One JSON line on stderr (stdout carries the ``listening`` line tests and scripts read)."""
    print(json.dumps({"uplink": event, **fields}, sort_keys=True), file=sys.stderr, flush=True)


class Uplink:
    """Sends outbox entries to one hub as device-signed envelopes (``send`` is an outbox sink)."""

    def __init__(self, hub: HubClient, *, device_id: str, key: SigningKey,
                 clock_ms: Callable[[], int] = wall_ms) -> None:
        self.hub, self.device_id, self.key, self.clock_ms = hub, device_id, key, clock_ms
        self.audience: str | None = None
        self.discovery: dict[str, Any] | None = None

    def discover(self) -> dict[str, Any]:
        """Read the hub's discovery document (its ``hub_url`` is the envelopes' audience)."""
        document = self.hub.request("GET", DISCOVERY)
        if not isinstance(document, dict) or not isinstance(document.get("hub_url"), str):
            raise HubError(0, "hub_bad_response", "the discovery document has no hub_url")
        self.discovery, self.audience = document, document["hub_url"]
        return document

    def envelopes(self, batch: list[Entry]) -> list[dict[str, Any]]:
        assert self.audience is not None
        now_ms = self.clock_ms()
        return [env.issue_envelope(env.Entry(e.seq, e.kind, e.body, e.prev_hash, e.entry_hash, e.created_ms),
                                   device_id=self.device_id, audience=self.audience, key=self.key, sent_ms=now_ms,
                                   nonce=secrets.token_urlsafe(env.NONCE_BYTES_MIN)) for e in batch]

    def send(self, batch: list[Entry]) -> None:
        """Deliver ``batch`` (raises what ``Outbox.deliver_batches`` expects when not all was taken)."""
        if self.audience is None:
            self.discover()
        assert self.audience is not None
        token = device_token(self.key, device_id=self.device_id, hub_url=self.audience,
                             now_s=self.clock_ms() // 1000)
        traceparent = batch_traceparent(batch)  # one purchase: its trace (node/delivery/trace_context.py)
        if traceparent is not None:
            _note("traced", traceparent=traceparent, seq=batch[0].seq)
        try:
            self.hub.request("POST", TRACES, {"envelopes": self.envelopes(batch)}, bearer=token,
                             headers={"traceparent": traceparent} if traceparent else None)
        except HubError as exc:
            index = exc.problem.get("index")
            taken = index if type(index) is int and 0 <= index < len(batch) else 0
            raise BatchFailed(taken, self._cause(exc)) from None

    def _cause(self, exc: HubError) -> Exception:
        if exc.code in STALE_VIEW:
            self.audience = None  # read the discovery document again before the next attempt
        if exc.code in PERMANENT:
            return EntryRefused(exc.code, str(exc))
        expected = exc.problem.get("expected_seq")
        if exc.code == "trace_chain_gap" and type(expected) is int and expected >= 1:
            return ResumeFrom(expected)
        return exc


class HubKeys:
    """The hub signing keys the delivery server trusts: pinned ones, and those discovery showed
    within the last 25 hours (the hub honours a previous key for 24 h after a rotation)."""

    def __init__(self, pinned: dict[str, VerifyKey], cache: Path | None = None) -> None:
        self.pinned = dict(pinned)
        self.cache = cache
        self.seen: dict[str, tuple[VerifyKey, int]] = {}
        if cache is not None and cache.exists():
            try:
                saved = json.loads(cache.read_text())
                self.seen = {kid: (VerifyKey.from_multibase(v["public_key"]), int(v["seen_ms"]))
                             for kid, v in saved.items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                self.seen = {}  # a damaged cache is only a cache: the next discovery refills it

    def learn(self, document: dict[str, Any], now_ms: int) -> None:
        signing = document.get("signing_key") if isinstance(document, dict) else None
        if not isinstance(signing, dict) or not isinstance(signing.get("kid"), str):
            raise HubError(0, "hub_bad_response", "the discovery document has no signing_key")
        self.seen[signing["kid"]] = (VerifyKey.from_multibase(signing["public_key"]), now_ms)
        self.seen = {kid: v for kid, v in self.seen.items() if now_ms - v[1] <= HUB_KEY_MEMORY_MS}
        if self.cache is not None:
            tmp = self.cache.with_name(self.cache.name + ".tmp")
            tmp.write_text(json.dumps({kid: {"public_key": key.to_multibase(), "seen_ms": seen}
                                       for kid, (key, seen) in self.seen.items()}))
            tmp.replace(self.cache)

    def trusted(self, now_ms: int) -> dict[str, VerifyKey]:
        recent = {kid: key for kid, (key, seen) in self.seen.items() if now_ms - seen <= HUB_KEY_MEMORY_MS}
        return {**recent, **self.pinned}


class UplinkThread(threading.Thread):
    """Heartbeats, hub key refreshes and outbox delivery for ``aim-node serve`` (module docstring)."""

    def __init__(self, outbox_path: Path, uplink: Uplink, *, hub_keys: HubKeys | None = None,
                 on_keys: Callable[[dict[str, VerifyKey]], None] | None = None, heartbeat_s: float = 300.0,
                 refresh_s: float = 300.0, pump_s: float = 2.0, clock_ms: Callable[[], int] = wall_ms) -> None:
        super().__init__(name="aim-node-uplink", daemon=True)
        self.outbox_path, self.uplink, self.hub_keys, self.on_keys = outbox_path, uplink, hub_keys, on_keys
        self.heartbeat_ms, self.refresh_ms, self.pump_s = int(heartbeat_s * 1000), int(refresh_s * 1000), pump_s
        self.clock_ms = clock_ms
        self.started_ms = clock_ms()
        self.stopping = threading.Event()
        self.failure: BaseException | None = None

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stopping.set()
        self.join(timeout_s)

    def run(self) -> None:
        outbox = Outbox(self.outbox_path)
        try:
            if outbox.unpark():
                _note("unparked", detail="a parked entry is tried once more at start")
            self._loop(outbox)
        except BaseException as exc:  # noqa: BLE001 - kept for the owner to see; the server goes on
            self.failure = exc
            _note("stopped", error=repr(exc))
        finally:
            outbox.close()

    def _loop(self, outbox: Outbox) -> None:
        next_beat = next_refresh = self.started_ms
        parked: int | None = None
        while not self.stopping.is_set():
            now = self.clock_ms()
            try:
                if self.heartbeat_ms and now >= next_beat:
                    next_beat = now + self.heartbeat_ms
                    outbox.append("heartbeat", {"started_ms": self.started_ms,
                                                "uptime_s": (now - self.started_ms) // 1000,
                                                "outbox_pending": outbox.status()["pending"]}, now)
                if self.hub_keys is not None and now >= next_refresh:
                    next_refresh = now + self.refresh_ms
                    self._refresh(now)
                outbox.deliver_batches(self.uplink.send, now, batch_size=BATCH_SIZE)
                state = outbox.status()["parked"]
            except Exception as exc:  # noqa: BLE001 - e.g. a full disk: say so, keep trying
                _note("error", error=repr(exc))
                state = None
            if state is not None and state["seq"] != parked:
                _note("parked", **state)
            parked = state["seq"] if state is not None else None
            self.stopping.wait(self.pump_s)

    def _refresh(self, now_ms: int) -> None:
        assert self.hub_keys is not None
        try:
            self.hub_keys.learn(self.uplink.discover(), now_ms)
        except MarketError as exc:
            if exc.code != "hub_unreachable":
                _note("discovery_failed", code=exc.code)
            return
        if self.on_keys is not None:
            self.on_keys(self.hub_keys.trusted(now_ms))
