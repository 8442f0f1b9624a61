"""What the hub records of a node's traces: one ``Trace`` per outbox entry, ``Signal``s for refusals.

``Trace`` (id = uuid5 of the device id and the entry's ``seq``) is created once by
``TraceRecorded`` and never changes. Its id makes each entry recorded exactly once: two hosts
recording the same entry collide on version 1 in the store and one loses (then reads it back
as a duplicate). It also keeps the chain without a hot per-device stream: entry ``n`` is
recorded only if ``Trace(n-1)`` exists with ``entry_hash == prev_hash``, so the recorded
entries of a device are always ``1..head`` and the head is found by a binary search on
existence (:func:`head_search`) when a gap must be reported.

``Signal`` (``BehaviourSignal``) is one fact for the trust issue: a refused envelope (its
reason code), a trace whose effect was refused (a receipt that does not verify, a redemption
by another key), or a refusal the node reported (someone tried a bound token). A signal made
by a trace is created in the same save as the trace (id = uuid5 of the trace id), so it too
is recorded once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.envelope import GENESIS, VerifiedEnvelope
from domain.model.errors import TraceChainFork, TraceChainGap
from domain.model.ids import NS_DEVICE

NS_TRACE = uuid5(NS_DEVICE, "trace")
NS_SIGNAL = uuid5(NS_DEVICE, "signal")
DETAIL_CHARS_MAX = 300

EFFECT_APPLIED = "applied"  # the purchase recorded what the trace says
EFFECT_NONE = "none"  # nothing to apply (a heartbeat; a refusal the node reported is a signal)
EFFECT_REFUSED = "refused"  # authentic and in order, but its content was refused: a signal too
EFFECTS = (EFFECT_APPLIED, EFFECT_NONE, EFFECT_REFUSED)


def trace_id(device_id: str, seq: int) -> UUID:
    return uuid5(NS_TRACE, f"{device_id}:{seq}")


def trace_signal_id(device_id: str, seq: int) -> UUID:
    """The id of the signal a trace makes (one per trace at most)."""
    return uuid5(NS_SIGNAL, f"{device_id}:{seq}")


class Trace(MarketAggregate):
    """One outbox entry of one device, as the hub recorded it (with its envelope, so an
    auditor can verify the device's signature again)."""

    @event("TraceRecorded")
    def __init__(self, id: UUID, meta: dict, device_id: str, seq: int, kind: str, entry_hash: str,
                 prev_hash: str, created_ms: int, body_digest: str, sent_ms: int, nonce: str, kid: str,
                 envelope: dict[str, Any], effect: str, effect_code: str | None) -> None:
        self.device_id = device_id
        self.seq = seq
        self.kind = kind
        self.entry_hash = entry_hash
        self.prev_hash = prev_hash
        self.created_ms = created_ms
        self.body_digest = body_digest
        self.sent_ms = sent_ms
        self.nonce = nonce
        self.kid = kid
        self.envelope = envelope
        self.effect = effect
        self.effect_code = effect_code

    @classmethod
    def record(cls, meta: dict, verified: VerifiedEnvelope, *, kid: str, effect: str,
               effect_code: str | None) -> Trace:
        assert effect in EFFECTS, effect
        entry = verified.entry
        return cls(id=trace_id(verified.device_id, entry.seq), meta=meta, device_id=verified.device_id,
                   seq=entry.seq, kind=entry.kind, entry_hash=entry.entry_hash, prev_hash=entry.prev_hash,
                   created_ms=entry.created_ms, body_digest=verified.body_digest, sent_ms=verified.sent_ms,
                   nonce=verified.nonce, kid=kid, envelope=verified.envelope, effect=effect, effect_code=effect_code)

    def to_public(self) -> dict[str, Any]:
        return {"seq": self.seq, "entry_hash": self.entry_hash, "kind": self.kind, "effect": self.effect,
                "code": self.effect_code}


class Signal(MarketAggregate):
    """A behaviour signal about a device: what it sent that was refused, and why."""

    @event("BehaviourSignal")
    def __init__(self, id: UUID, meta: dict, device_id: str, kind: str, code: str, at_ms: int, seq: int | None,
                 entry_hash: str | None, subject: dict[str, Any], detail: str) -> None:
        self.device_id = device_id
        self.kind = kind
        self.code = code
        self.at_ms = at_ms
        self.seq = seq
        self.entry_hash = entry_hash
        self.subject = subject
        self.detail = detail

    @classmethod
    def make(cls, id: UUID, meta: dict, *, device_id: str, kind: str, code: str, at_ms: int,
               seq: int | None = None, entry_hash: str | None = None, subject: dict[str, Any] | None = None,
               detail: str = "") -> Signal:
        return cls(id=id, meta=meta, device_id=device_id, kind=kind, code=code, at_ms=at_ms, seq=seq,
                   entry_hash=entry_hash, subject=dict(subject or {}), detail=detail[:DETAIL_CHARS_MAX])


def check_chain(verified: VerifiedEnvelope, recorded: Trace | None, previous: Trace | None,
                head: Callable[[], tuple[int, str]]) -> bool:
    """Decide an entry against the recorded chain. Returns True for a duplicate (the same entry
    is recorded: answer it, record nothing), False for an entry to record.

    Args:
        verified: the verified envelope.
        recorded: the trace already recorded at this ``seq``, if any.
        previous: the trace recorded at ``seq - 1``, if any (unused for ``seq`` 1).
        head: ``(seq, entry_hash)`` of the device's last recorded entry (called for a gap only).

    Raises:
        TraceChainFork: another entry is recorded at this ``seq``, or ``prev_hash`` is not
            the recorded predecessor's hash (genesis for ``seq`` 1).
        TraceChainGap: the predecessor is not recorded (``expected_seq``, ``head_hash`` say
            where the node must resume).
    """
    entry = verified.entry
    if recorded is not None:
        if recorded.entry_hash == entry.entry_hash:
            return True
        raise TraceChainFork(f"another entry is recorded at seq {entry.seq}", seq=entry.seq,
                             recorded_hash=recorded.entry_hash)
    if entry.seq == 1:
        if entry.prev_hash != GENESIS.hex():
            raise TraceChainFork("entry 1 must chain from the genesis hash (32 zero bytes)", seq=1)
        return False
    if previous is None:
        head_seq, head_hash = head()
        raise TraceChainGap(f"entry {entry.seq} arrived before entry {head_seq + 1}; resume from there",
                            expected_seq=head_seq + 1, head_hash=head_hash)
    if previous.entry_hash != entry.prev_hash:
        raise TraceChainFork(f"entry {entry.seq} does not chain from the recorded entry {entry.seq - 1}",
                             seq=entry.seq, recorded_hash=previous.entry_hash)
    return False


def head_search(exists: Callable[[int], bool], upper: int) -> int:
    """The largest ``seq`` in ``0..upper`` for which ``exists(seq)`` (0 when none): recorded
    entries are always ``1..head``, so existence is monotone and a binary search finds it."""
    low, high = 0, upper  # the answer stays in low..high
    while low < high:
        mid = (low + high + 1) // 2
        if exists(mid):
            low = mid
        else:
            high = mid - 1
    return low
