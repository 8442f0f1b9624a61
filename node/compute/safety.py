"""The safety pre-check: what a call's input must pass before anything runs. A refusal costs the
buyer nothing; the node signs it (an ``InvocationRejection``) and reports it as a behaviour signal.

Built-in rules, in order (an asset's manifest may switch off ``schema``, ``deny_patterns``,
``rate`` or a plugin by name with ``safety.disable``; the size and JSON rules always apply):

* ``builtin:input_size``: the input is at most the asset's ``limits.max_input_bytes``;
* ``builtin:json``: the input is JSON;
* ``builtin:schema``: the input matches the asset's ``input_schema``;
* ``builtin:deny_patterns``: no string anywhere in the input matches a deny pattern
  (:data:`DENY_PATTERNS`, prompt-injection markers, case-insensitive, plus the manifest's
  ``safety.deny_patterns`` and the node's ``--deny-pattern``);
* ``builtin:rate``: the buyer key calls at most ``rate_per_s`` per second (burst ``rate_burst``):
  code ``invoke_rate_limited``.

Plugins: every entry point in the group ``aimarket.compute.safety`` (``importlib.metadata``) is a
callable ``check(request: SafetyRequest) -> None | str | Refusal``, run after the built-in rules
in name order: ``None`` passes, a string refuses with that detail (code ``invoke_input_rejected``,
rule ``plugin:<entry point name>``). A plugin that raises refuses too (fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import orjson

from domain.model.compute import Manifest
from domain.model.errors import InvokeInputRejected, InvokeRateLimited
from node.compute.registry import validator

GROUP = "aimarket.compute.safety"
DENY_PATTERNS = (
    r"\bignore\s+(?:all\s+|any\s+)?(?:of\s+)?(?:the\s+|your\s+)?(?:previous|prior|above|earlier)\s+"
    r"(?:instructions?|prompts?|messages?|rules)",
    r"\bdisregard\s+(?:all\s+|any\s+)?(?:the\s+|your\s+)?(?:previous|prior|above|system)\s+(?:instructions?|prompts?)",
    r"\bforget\s+(?:all\s+)?(?:your|the)\s+(?:previous\s+)?instructions",
    r"\byou\s+are\s+now\s+(?:DAN|in\s+developer\s+mode)\b",
    r"\b(?:reveal|print|show|repeat)\s+(?:me\s+)?(?:your|the)\s+system\s+prompt",
    r"\bBEGIN\s+(?:SYSTEM|DEVELOPER)\s+(?:PROMPT|MESSAGE)",
    r"<\|(?:im_start|im_end|system|endoftext)\|>",
    r"\[/?INST\]",
    r"<</?SYS>>",
)
BUILTIN = ("input_size", "json", "schema", "deny_patterns", "rate")
MAX_STRINGS = 100_000


@dataclass(frozen=True, slots=True)
class SafetyRequest:
    """What a check sees: the asset, the buyer key's thumbprint, the input's bytes and (once
    parsed) value, and the node's clock."""

    listing_id: str
    manifest: Manifest
    buyer_jkt: str
    input_bytes: bytes
    value: Any
    now_ms: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was refused: the rule, the stable code, a short ASCII detail."""

    rule: str
    code: str
    detail: str


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\n", " ")[:256]


def _strings(value: Any) -> Iterable[str]:
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            seen += 1
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        if seen > MAX_STRINGS:
            return


class RateLimiter:
    """A token bucket per key (``rate_per_s`` refill, ``burst`` capacity), on the node's clock."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self._buckets: dict[str, tuple[float, int]] = {}

    def allow(self, key: str, now_ms: int) -> bool:
        tokens, last = self._buckets.get(key, (float(self.burst), now_ms))
        tokens = min(float(self.burst), tokens + (now_ms - last) * self.rate_per_s / 1000)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now_ms)
        if len(self._buckets) > 65536:
            self._buckets.clear()
        return allowed


Plugin = Callable[[SafetyRequest], Any]


def installed_plugins() -> list[tuple[str, Plugin]]:
    """The entry points of :data:`GROUP`, loaded, in name order (a broken one is a plugin that
    refuses everything: it is named in every refusal rather than silently skipped)."""
    found: list[tuple[str, Plugin]] = []
    for entry in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        try:
            found.append((entry.name, entry.load()))
        except Exception as exc:  # noqa: BLE001 - third-party code
            message = f"the plugin failed to load: {type(exc).__name__}"

            def broken(_request: SafetyRequest, message: str = message) -> str:
                return message
            found.append((entry.name, broken))
    return found


class SafetyCheck:
    """The built-in rules and the plugins, for every registered asset."""

    def __init__(self, manifests: dict[str, Manifest], *, rate_per_s: float = 1000.0, rate_burst: int = 1000,
                 extra_patterns: Iterable[str] = (), plugins: list[tuple[str, Plugin]] | None = None) -> None:
        self.rate = RateLimiter(rate_per_s, rate_burst)
        self.plugins = installed_plugins() if plugins is None else plugins
        self._schemas = {listing: validator(m.input_schema) for listing, m in manifests.items()}
        self._deny = {}
        for listing, m in manifests.items():
            patterns = [*DENY_PATTERNS, *extra_patterns, *m.deny_patterns]
            self._deny[listing] = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)

    def check(self, listing_id: str, manifest: Manifest, buyer_jkt: str, data: bytes, size: int,
              now_ms: int) -> tuple[Refusal | None, Any]:
        """``(None, parsed input)`` when every rule passes, else ``(the refusal, None)``. ``size``
        is the input's length as sent (``data`` may hold only the start of an oversized one)."""
        off = set(manifest.disabled_rules)
        if size > manifest.max_input_bytes or len(data) != size:
            return Refusal("builtin:input_size", InvokeInputRejected.code,
                           f"input of {size} bytes is over the asset's {manifest.max_input_bytes}"), None
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return Refusal("builtin:json", InvokeInputRejected.code, _ascii(f"input is not JSON: {exc}")), None
        if "schema" not in off:
            error = next(iter(self._schemas[listing_id].iter_errors(value)), None)
            if error is not None:
                return Refusal("builtin:schema", InvokeInputRejected.code, _ascii(f"input schema: {error.message}")), None
        if "deny_patterns" not in off:
            deny = self._deny[listing_id]
            for text in _strings(value):
                if deny.search(text):
                    return Refusal("builtin:deny_patterns", InvokeInputRejected.code,
                                   "the input matches a deny pattern (prompt-injection marker)"), None
        if "rate" not in off and not self.rate.allow(buyer_jkt, now_ms):
            return Refusal("builtin:rate", InvokeRateLimited.code,
                           f"more than {self.rate.rate_per_s:g} calls per second from this buyer key"), None
        request = SafetyRequest(listing_id, manifest, buyer_jkt, data, value, now_ms)
        for name, plugin in self.plugins:
            if name in off:
                continue
            try:
                verdict = plugin(request)
            except Exception as exc:  # noqa: BLE001 - third-party code fails closed
                verdict = f"the safety plugin failed: {type(exc).__name__}"
            if isinstance(verdict, Refusal):
                return verdict, None
            if verdict is not None:
                return Refusal(f"plugin:{name}", InvokeInputRejected.code, _ascii(str(verdict))), None
        return None, value
