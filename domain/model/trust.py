"""Trust scores: a 30-day Beta reputation per seller device and per seller account.

Pure: the score is a function of facts read from the log (each with its event time, in epoch
milliseconds) and of ``as_of_ms``, the time the score is taken at. The projection passes the
latest event time it has seen, never the wall clock, so a replay yields the same numbers.
The formula and every constant are described in ``docs/trust.md``; keep the two together.

Each component is a Beta expectation ``(r + ALPHA) / (r + s + ALPHA + BETA)``: with no
evidence it is the prior 0.5, and no finite evidence makes it 0 or 1. The score is the
weighted mean of the components.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.model.purchase import purchase_status

DAY_MS = 86_400_000
WINDOW_MS = 30 * DAY_MS  # an event counts while it is at most 30 days old
ALPHA = 1.0  # Beta prior: one imagined success ...
BETA = 1.0  # ... and one imagined failure: a newcomer scores 0.5
PRIOR = ALPHA / (ALPHA + BETA)
UPTIME_BUCKET_MS = 3_600_000  # an hour with at least one heartbeat is an hour up
KEY_AGE_MAX_MS = 90 * DAY_MS  # policy: rotate the device key at least every 90 days
ROTATIONS_COUNTED_MAX = 2  # rotating more often than this in 30 days earns nothing more
BUYER_PERIOD_MS = 7 * DAY_MS  # one buyer counts at most once per 7 days
BUYER_SHARE_MAX = 0.25  # one buyer's evidence is at most a quarter of a seller's delivery evidence ...
BUYER_WEIGHT_FLOOR = 1.0  # ... or one purchase's worth, when there are too few other buyers
VALUE_UNIT_MINOR = 100  # value weight: 1 + log10(1 + price_minor / 100), at most 3
VALUE_WEIGHT_MAX = 3.0
REPLAY_SIGNAL_WEIGHT = 2.0  # a replayed message or token weighs twice an ordinary refusal
SIGNAL_WEIGHT = 1.0
LATE_DELIVERY_WEIGHT = 1.0
# Sales and compute sessions are each a seller's work for buyers: delivery keeps the largest
# share, compute takes 0.15 from uptime and behaviour (0.05 each) and delivery (0.05).
WEIGHTS = {"delivery": 0.35, "uptime": 0.15, "keys": 0.15, "behaviour": 0.20, "compute": 0.15}
SCORE_DIGITS = 6  # scores are rounded so every store and platform reads back the same number

LINK_SAME_ACCOUNT = "same_account"
LINK_SAME_WALLET = "same_wallet"
LINK_SAME_PAYOUT_ACCOUNT = "same_payout_account"


@dataclass(frozen=True)
class PurchaseFact:
    """One purchase of the seller, as the log has it so far."""

    purchase_id: str
    buyer_account_id: str
    price_minor: int
    start_by_ms: int
    expires_at_ms: int
    redeemed: bool = False
    delivered_at_ms: int | None = None
    revoked: bool = False
    expired_reason: str = ""
    outcome_ms: int | None = None  # event time of the delivery, revocation or expiry
    refs: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        return purchase_status(delivered=self.delivered_at_ms is not None, revoked=self.revoked,
                               expired_reason=self.expired_reason, redeemed=self.redeemed)


@dataclass(frozen=True)
class SessionFact:
    """One compute session (an invocation) of the seller, as the log has it so far.

    ``outcome`` is ``captured`` (its final receipt was captured), ``refused`` (its final report
    was refused at intake), ``lapsed`` (no final report before the hub's report deadline) or
    ``""`` while in flight; ``outcome_ms`` is the event time of the first of these."""

    invocation_id: str
    buyer_account_id: str
    budget_minor: int
    outcome: str = ""
    countersigned: bool = False
    outcome_ms: int | None = None
    refs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fact:
    """A dated fact about one device: a heartbeat hour, a key rotation or a behaviour signal."""

    device_id: str
    kind: str  # heartbeat | rotation | signal
    at_ms: int
    ref: str
    code: str = ""
    signal_kind: str = ""


@dataclass(frozen=True)
class Facts:
    """What the score of one subject (a device, or every device of an account) is taken from."""

    seller_account_id: str
    enrolled_ms: Mapping[str, int]  # device id -> enrolment time
    key_since_ms: Mapping[str, int]  # device id -> time its current key was set
    facts: Sequence[Fact] = ()
    purchases: Sequence[PurchaseFact] = ()
    identities: Mapping[str, frozenset[str]] = field(default_factory=dict)  # account -> wallets, payout accounts
    sessions: Sequence[SessionFact] = ()


def beta(positive: float, negative: float) -> float:
    return (positive + ALPHA) / (positive + negative + ALPHA + BETA)


def value_weight(price_minor: int) -> float:
    return min(VALUE_WEIGHT_MAX, 1.0 + math.log10(1.0 + max(price_minor, 0) / VALUE_UNIT_MINOR))


def link_reason(seller_account_id: str, buyer_account_id: str, identities: Mapping[str, frozenset[str]]) -> str:
    """Why a buyer is linked to the seller ("" when it is not)."""
    if buyer_account_id == seller_account_id:
        return LINK_SAME_ACCOUNT
    shared = identities.get(seller_account_id, frozenset()) & identities.get(buyer_account_id, frozenset())
    if any(i.startswith("wallet:") for i in shared):
        return LINK_SAME_WALLET
    if any(i.startswith("payout:") for i in shared):
        return LINK_SAME_PAYOUT_ACCOUNT
    return ""


def in_window(at_ms: int | None, as_of_ms: int) -> bool:
    return at_ms is not None and as_of_ms - WINDOW_MS <= at_ms <= as_of_ms


def score(facts: Facts, as_of_ms: int) -> dict[str, Any]:
    """The score of one subject at ``as_of_ms``: ``{"score", "as_of_ms", "components", "sources"}``.

    ``sources`` are the refs (``position:type:aggregate id:version``) of every event that moved
    the score, so a reader can find each one in the log or the audit trail.
    """
    delivery, periods, sources = _delivery(facts, as_of_ms)
    components = {
        "delivery": delivery,
        "uptime": _uptime(facts, as_of_ms, sources),
        "keys": _keys(facts, as_of_ms, sources),
        "behaviour": _behaviour(facts, as_of_ms, periods, sources),
        "compute": _compute(facts, as_of_ms, sources),
    }
    total = sum(WEIGHTS.values())
    value = sum(WEIGHTS[name] * c["score"] for name, c in components.items()) / total
    for name, c in components.items():
        c["weight"] = WEIGHTS[name]
        c["score"] = round(c["score"], SCORE_DIGITS)
    return {"score": round(value, SCORE_DIGITS), "as_of_ms": as_of_ms, "window_ms": WINDOW_MS,
            "components": components, "sources": sorted(sources)}


def _delivery(facts: Facts, as_of_ms: int) -> tuple[dict[str, Any], int, set[str]]:
    """Delivered against expired or revoked, over purchases decided inside the window (a
    purchase still in flight, its deadlines not passed, is neither);
    linked buyers weigh zero; one buyer's purchases within 7 days count as one; a buyer's
    share is capped. Returns the component, the number of (buyer, period) deliveries and the
    sources."""
    sources: set[str] = set()
    listed: list[dict[str, Any]] = []
    by_buyer: dict[str, list[tuple[int, float, float]]] = {}  # buyer -> (at, weight, positive fraction)
    for p in sorted(facts.purchases, key=lambda p: (p.outcome_ms or 0, p.purchase_id)):
        status = p.status
        if status not in ("delivered", "expired", "revoked") or not in_window(p.outcome_ms, as_of_ms):
            continue
        item = {"purchase_id": p.purchase_id, "buyer_account_id": p.buyer_account_id, "status": status,
                "at_ms": p.outcome_ms, "weight": 0.0, "reason": ""}
        listed.append(item)
        sources.update(p.refs)
        reason = link_reason(facts.seller_account_id, p.buyer_account_id, facts.identities)
        if reason:
            item["reason"] = reason
            continue
        item["weight"] = value_weight(p.price_minor)
        by_buyer.setdefault(p.buyer_account_id, []).append(
            (p.outcome_ms or 0, item["weight"], 1.0 if status == "delivered" else 0.0))
    positive, negative, delivered_periods = _buyer_evidence(by_buyer)
    return ({"score": beta(positive, negative), "positive": round(positive, SCORE_DIGITS),
             "negative": round(negative, SCORE_DIGITS), "buyers": len(by_buyer), "purchases": listed},
            delivered_periods, sources)


def _buyer_evidence(by_buyer: dict[str, list[tuple[int, float, float]]]) -> tuple[float, float, int]:
    """The buyer rules shared by delivery and compute: 7-day periods per buyer, a buyer's share
    capped. Returns positive and negative evidence and the number of periods with a success."""
    per_buyer = {b: _periods(outcomes) for b, outcomes in by_buyer.items()}
    totals = {b: sum(w for w, _ in ps) for b, ps in per_buyer.items()}
    grand = sum(totals.values())
    positive = negative = 0.0
    good_periods = 0
    for buyer, ps in per_buyer.items():
        others = grand - totals[buyer]
        cap = max(BUYER_WEIGHT_FLOOR, BUYER_SHARE_MAX / (1.0 - BUYER_SHARE_MAX) * others)
        scale = min(1.0, cap / totals[buyer]) if totals[buyer] else 0.0
        for weight, fraction in ps:
            positive += scale * weight * fraction
            negative += scale * weight * (1.0 - fraction)
            good_periods += fraction > 0
    return positive, negative, good_periods


def session_value(s: SessionFact) -> float | None:
    """A decided session's positive fraction: 1 captured with the buyer's countersignature, 0
    refused or lapsed; None when it does not count (in flight, or captured with no
    countersignature: the buyer accepted nothing, the capture was capped at one call a slot)."""
    if s.outcome == "captured":
        return 1.0 if s.countersigned else None
    if s.outcome in ("refused", "lapsed"):
        return 0.0
    return None


def _compute(facts: Facts, as_of_ms: int, sources: set[str]) -> dict[str, Any]:
    """Compute sessions decided inside the window, by the delivery rules: value weight of the
    budget (the hold), linked buyers weigh zero, one buyer once per 7 days, a buyer's share capped."""
    listed: list[dict[str, Any]] = []
    by_buyer: dict[str, list[tuple[int, float, float]]] = {}
    for s in sorted(facts.sessions, key=lambda s: (s.outcome_ms or 0, s.invocation_id)):
        fraction = session_value(s)
        if not s.outcome or not in_window(s.outcome_ms, as_of_ms):
            continue
        item = {"invocation_id": s.invocation_id, "buyer_account_id": s.buyer_account_id, "outcome": s.outcome,
                "countersigned": s.countersigned, "at_ms": s.outcome_ms, "weight": 0.0, "reason": ""}
        listed.append(item)
        sources.update(s.refs)
        reason = link_reason(facts.seller_account_id, s.buyer_account_id, facts.identities)
        if reason or fraction is None:
            item["reason"] = reason or "not_countersigned"
            continue
        item["weight"] = value_weight(s.budget_minor)
        by_buyer.setdefault(s.buyer_account_id, []).append((s.outcome_ms or 0, item["weight"], fraction))
    positive, negative, _ = _buyer_evidence(by_buyer)
    return {"score": beta(positive, negative), "positive": round(positive, SCORE_DIGITS),
            "negative": round(negative, SCORE_DIGITS), "buyers": len(by_buyer), "sessions": listed}


def _periods(outcomes: list[tuple[int, float, float]]) -> list[tuple[float, float]]:
    """One buyer's outcomes grouped into 7-day periods, each opened by the first outcome after
    the previous period: ``(weight, positive fraction)`` per period, weight the largest in it."""
    periods: list[list[tuple[float, float]]] = []
    opened_ms = None
    for at_ms, weight, positive in sorted(outcomes):
        if opened_ms is None or at_ms >= opened_ms + BUYER_PERIOD_MS:
            periods.append([])
            opened_ms = at_ms
        periods[-1].append((weight, positive))
    out = []
    for group in periods:
        total = sum(w for w, _ in group)
        out.append((max(w for w, _ in group), sum(w * f for w, f in group) / total if total else 0.0))
    return out


def _uptime(facts: Facts, as_of_ms: int, sources: set[str]) -> dict[str, Any]:
    """Hours with a heartbeat over the whole hours each device was enrolled inside the window."""
    start_ms = as_of_ms - WINDOW_MS
    observed = covered = 0
    for device_id, enrolled_ms in facts.enrolled_ms.items():
        first = max(start_ms, enrolled_ms) // UPTIME_BUCKET_MS
        current = as_of_ms // UPTIME_BUCKET_MS  # the hour under way is not judged yet
        hours = max(0, current - first)
        beats = {f.at_ms // UPTIME_BUCKET_MS: f.ref for f in facts.facts
                 if f.device_id == device_id and f.kind == "heartbeat" and first <= f.at_ms // UPTIME_BUCKET_MS < current}
        sources.update(beats.values())
        observed += hours
        covered += len(beats)
    return {"score": beta(covered, observed - covered), "positive": float(covered),
            "negative": float(observed - covered), "hours_observed": observed, "hours_up": covered}


def _keys(facts: Facts, as_of_ms: int, sources: set[str]) -> dict[str, Any]:
    """Rotations earn (a few), a key older than the policy and every use of a retired key
    (a ``key_expired`` signal) cost."""
    rotations = [f for f in facts.facts if f.kind == "rotation" and in_window(f.at_ms, as_of_ms)]
    expired_uses = [f for f in facts.facts if f.kind == "signal" and f.code == "key_expired"
                    and in_window(f.at_ms, as_of_ms)]
    overdue = sorted(d for d, since in facts.key_since_ms.items() if as_of_ms - since > KEY_AGE_MAX_MS)
    sources.update(f.ref for f in (*rotations, *expired_uses))
    per_device: dict[str, int] = {}
    for f in rotations:
        per_device[f.device_id] = per_device.get(f.device_id, 0) + 1
    positive = float(sum(min(n, ROTATIONS_COUNTED_MAX) for n in per_device.values()))
    negative = float(len(expired_uses) + len(overdue))
    return {"score": beta(positive, negative), "positive": positive, "negative": negative,
            "rotations": len(rotations), "retired_key_uses": len(expired_uses), "keys_overdue": overdue}


def signal_weight(f: Fact) -> tuple[float, str]:
    """What a behaviour signal costs the device, and why."""
    if f.signal_kind in ("refusal", "invoke_rejection"):
        # The node reported refusing someone else's bound token, or rejecting a buyer's input
        # in its safety pre-check: it did right (the signal is about the buyer); recorded only.
        return 0.0, "reported_by_node"
    if "replay" in f.code:
        return REPLAY_SIGNAL_WEIGHT, "replayed"
    return SIGNAL_WEIGHT, "refused"


def _behaviour(facts: Facts, as_of_ms: int, delivered_periods: int, sources: set[str]) -> dict[str, Any]:
    """Refused and replayed messages and late deliveries against the deliveries that counted."""
    listed: list[dict[str, Any]] = []
    negative = 0.0
    for f in facts.facts:
        if f.kind != "signal" or f.code == "key_expired" or not in_window(f.at_ms, as_of_ms):
            continue
        weight, reason = signal_weight(f)
        negative += weight
        sources.add(f.ref)
        listed.append({"code": f.code, "kind": f.signal_kind, "at_ms": f.at_ms, "weight": weight, "reason": reason})
    late = 0
    for p in facts.purchases:
        if (p.delivered_at_ms is not None and p.delivered_at_ms > p.expires_at_ms and in_window(p.outcome_ms, as_of_ms)
                and not link_reason(facts.seller_account_id, p.buyer_account_id, facts.identities)):
            late += 1
            negative += LATE_DELIVERY_WEIGHT
    positive = float(delivered_periods)
    return {"score": beta(positive, negative), "positive": positive, "negative": negative,
            "late_deliveries": late, "signals": listed,
            "refunds": "no refund is attributed to a seller in the log yet: zero weight"}
