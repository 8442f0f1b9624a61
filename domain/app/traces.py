"""Trace intake (``POST /v1/traces``): signed outbox entries from nodes, each recorded once.

For each envelope of a batch, in order (``docs/protocol.md``, "Traces"):

1. the envelope itself (``domain.model.envelope.verify_envelope``): shape, signature, audience,
   clock skew (±30 s on the envelope's send time, never on the entry's ``created_ms``: an entry
   may have waited hours in the outbox while the hub was away), entry hash;
2. its signer: the envelope names the device that sent the request (``foreign_device``), and
   its key is one of that device's keys, valid at the envelope's time (rotation grace honoured:
   ``key_expired`` after it; ``device_suspended``);
3. the nonce, spent once in the shared nonce store (``trace_replayed``);
4. the chain (``domain.model.traces.check_chain``): a re-delivered entry (same device, ``seq``
   and ``entry_hash``) answers ``duplicate`` and records nothing; a gap or a fork is refused;
5. the effect on its purchase (:class:`PurchaseEffects`) or invocation (:class:`InvocationEffects`),
   saved with the ``Trace`` in one
   ``market.save``: a lost race (another host recorded the entry, or changed the purchase)
   runs steps 4-5 again on fresh state, so concurrent re-deliveries record the entry once.

An envelope refused at steps 1-4 is recorded as a ``BehaviourSignal`` of the device that sent
it (its code, the entry's kind and ``seq`` when readable) and the batch stops there: the
problem names the envelope's ``index`` and carries the ``results`` of those before it, which
are recorded. An authentic, in-order entry whose content is refused (a receipt that does not
verify) is recorded with ``effect: refused`` and a signal: the node's chain goes on.
Not signals: losing races five times (409 ``conflict``) or a store that cannot be reached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID, uuid4

from domain.app.service import Service
from domain.model.device import Device
from domain.model.envelope import GENESIS, SKEW_MS, VerifiedEnvelope, readable_facts, verify_envelope
from domain.model.errors import (
    Conflict,
    Forbidden,
    ForeignDevice,
    InvalidInput,
    MarketError,
    NotFound,
    ReceiptInvalid,
    TokenReplayed,
    TraceReplayed,
    TraceSignatureInvalid,
    Unavailable,
)
from domain.model.keys import VerifyKey
from domain.model.traces import (
    EFFECT_APPLIED,
    EFFECT_NONE,
    EFFECT_REFUSED,
    Signal,
    Trace,
    check_chain,
    head_search,
    trace_id,
    trace_signal_id,
)

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.principal import Principal

BATCH_MAX = 32
NONCE_TTL_S = 2 * SKEW_MS // 1000 + 60  # past it, the skew check refuses the envelope anyway


@dataclass(frozen=True)
class Effect:
    """What a trace did to the rest of the hub.

    Attributes:
        outcome: ``applied``, ``none`` or ``refused`` (``domain.model.traces``).
        code: the refusal's code (or the code of a refusal the node reported).
        detail: why, for the signal.
        aggregates: what to save together with the trace (the purchase it changed).
        signal: record a behaviour signal with the trace.
        subject: what the signal is about (purchase, token, buyer key).
    """

    outcome: str
    code: str | None = None
    detail: str = ""
    aggregates: tuple[Any, ...] = ()
    signal: bool = False
    subject: dict[str, Any] = field(default_factory=dict)


class TraceEffects(Protocol):
    """Applies a verified, in-order entry (called inside the retried command: load fresh)."""

    def __call__(self, meta: dict[str, Any], device: Device, verified: VerifiedEnvelope) -> Effect: ...


_SUBJECT_FIELDS = ("purchase_id", "invocation_id", "jti", "jkt", "buyer_jkt")
# The compute kinds and the method of ``market.invocations`` that applies each (docs/protocol.md).
INVOKE_APPLY = {"invoke_bound": "apply_bound", "invoke_final": "apply_final", "invoke_rejection": "apply_rejection"}


def _subject(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """What a signal of this entry is about, read from its body (unverified: ids only)."""
    source = body
    if kind in ("receipt", "confirmation"):
        source = body.get("credentialSubject", {})
    elif kind in ("invoke_final", "invoke_rejection"):
        vc = body.get("receipt" if kind == "invoke_final" else "rejection")
        source = {**(vc.get("credentialSubject", {}) if isinstance(vc, dict) else {}),
                  **{k: v for k, v in body.items() if k in ("jti", "invocation_id")}}
    return {name: source[name] for name in _SUBJECT_FIELDS if isinstance(source.get(name), str)}


class InvocationEffects:
    """The compute kinds, applied by ``market.invocations`` (its ``apply_*`` return the aggregates
    to save with the trace, or raise a MarketError to refuse):

    * ``invoke_bound``: the session's binding (the buyer key that holds the token);
    * ``invoke_final``: the final receipt and countersignature: the capture and the release of
      the rest of the hold (nothing to save, ``effect: none``, when it was captured already);
    * ``invoke_rejection``: a node-signed safety rejection: recorded (applied) and a behaviour
      signal about the buyer key it names (``docs/trust.md``: it costs the seller nothing).

    A refused compute entry (a tampered receipt, a changed unit price, a replay) is recorded
    ``effect: refused`` with its code and a signal about the reporting device, as for purchases."""

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def __call__(self, meta: dict[str, Any], device: Device, kind: str, body: dict[str, Any]) -> Effect:
        subject = _subject(kind, body)
        try:
            aggregates = tuple(getattr(self.market.invocations, INVOKE_APPLY[kind])(meta, device, body))
        except MarketError as exc:
            return Effect(EFFECT_REFUSED, code=exc.code, detail=exc.detail, signal=True, subject=subject)
        if kind == "invoke_rejection":
            rejection = body["rejection"]["credentialSubject"]
            code = rejection.get("code") if isinstance(rejection.get("code"), str) else "invoke_input_rejected"
            return Effect(EFFECT_APPLIED, code=code, detail=f"the node's safety pre-check rejected a call "
                          f"({rejection.get('rule')})", aggregates=aggregates, signal=True, subject=subject)
        return Effect(EFFECT_APPLIED if aggregates else EFFECT_NONE, aggregates=aggregates, subject=subject)


class PurchaseEffects:
    """Redemptions, receipts and confirmations recorded on their purchase (``market.purchases``);
    a refusal the node reported (a bound token tried by another key or past its limits) is a
    behaviour signal; a heartbeat changes nothing (its trace is the uptime record); the compute
    kinds go to :class:`InvocationEffects`."""

    def __init__(self, market: Marketplace) -> None:
        self.market = market
        self.invocations = InvocationEffects(market)

    def __call__(self, meta: dict[str, Any], device: Device, verified: VerifiedEnvelope) -> Effect:
        kind, body = verified.entry.kind, verified.entry.body
        if kind == "heartbeat":
            return Effect(EFFECT_NONE)
        if kind in INVOKE_APPLY:
            return self.invocations(meta, device, kind, body)
        subject = _subject(kind, body)
        if kind == "refusal":
            return Effect(EFFECT_NONE, code=body["code"], detail="the node refused a bound token", signal=True,
                          subject=subject)
        try:
            purchase = self._apply(meta, device, kind, body)
        except MarketError as exc:
            return Effect(EFFECT_REFUSED, code=exc.code, detail=exc.detail, signal=True, subject=subject)
        return Effect(EFFECT_APPLIED, aggregates=(purchase,), subject=subject)

    def _apply(self, meta: dict[str, Any], device: Device, kind: str, body: dict[str, Any]) -> Any:
        purchases = self.market.purchases
        if kind == "redemption":
            if body["device_id"] != str(device.id):
                raise ForeignDevice("the redemption names another device than the one that reports it")
            purchase = purchases.purchase(body["purchase_id"])
            purchase.record_redemption(meta, jti=body["jti"], device_id=str(device.id), buyer_jkt=body["jkt"],
                                       redeemed_at_ms=body["bound_at_ms"])
            return purchase
        purchase_id = body["credentialSubject"].get("purchase_id")
        if not isinstance(purchase_id, str):
            raise ReceiptInvalid(f"the {kind} names no purchase")
        purchase = purchases.purchase(purchase_id)
        if kind == "receipt":
            if purchase.seller_device_id != str(device.id):  # its key is the one the receipt is checked with
                raise ForeignDevice("only the seller's device reports its receipts")
            purchase.record_receipt(meta, body, device_key=_own_key(device, body))
        else:  # signed by the buyer's cnf key: whichever node forwards it (the buyer's, the seller's)
            purchase.record_confirmation(meta, body)
        return purchase


def _own_key(device: Device, receipt: dict[str, Any]) -> VerifyKey:
    """The reporting device's key that issued ``receipt``: any key the device registered, a
    retired one too (the receipt may have waited in the outbox past the key's grace; the
    envelope that carries it is signed by a key valid now)."""
    issuer = receipt.get("issuer")
    for key in device.keys:
        verify_key = VerifyKey.from_multibase(key["public_key"])
        if issuer == verify_key.did_key:
            return verify_key
    raise ReceiptInvalid("the receipt is not signed by a key of the device that reports it")


class TraceService(Service):
    """The traces service of the marketplace (composed into ``Marketplace.traces``)."""

    def __init__(self, market: Marketplace, effects: TraceEffects | None = None) -> None:
        super().__init__(market)
        self.effects: TraceEffects = effects if effects is not None else PurchaseEffects(market)

    def now_ms(self) -> int:
        return int(self.clock().timestamp() * 1000)

    def intake(self, meta: dict[str, Any], principal: Principal, envelopes: Any) -> dict[str, Any]:
        """Take a batch of envelopes in order; stop at the first refused one (module docstring)."""
        if principal.kind != "device" or principal.device_id is None:
            raise Forbidden("traces are posted with a device token")
        if not isinstance(envelopes, list) or not 1 <= len(envelopes) <= BATCH_MAX:
            raise InvalidInput(f"envelopes is a list of 1..{BATCH_MAX} trace envelopes", param="envelopes")
        results: list[dict[str, Any]] = []
        for index, envelope in enumerate(envelopes):
            try:
                results.append(self._take(meta, principal.device_id, envelope))
            except MarketError as exc:
                exc.extra.update(index=index, results=results)
                raise
        return {"results": results}

    def _take(self, meta: dict[str, Any], device_id: str, envelope: Any) -> dict[str, Any]:
        now_ms = self.now_ms()
        try:
            verified = verify_envelope(envelope, audience=self.hub_url, now_ms=now_ms)
            device, kid = self._signer(device_id, verified)
            try:
                self.nonces.use_once(f"trace:{device_id}:{verified.nonce}", ttl_s=NONCE_TTL_S)
            except TokenReplayed:
                raise TraceReplayed("this envelope's nonce was already used: make a new envelope per send",
                                    param="proof.nonce") from None
            return self.retrying(lambda: self._record(meta, device, kid, verified))
        except MarketError as exc:
            if not (isinstance(exc, Unavailable) or type(exc) is Conflict):  # the node's doing, not ours
                self._signal_refusal(meta, device_id, envelope, exc, now_ms)
            raise

    def _signer(self, device_id: str, verified: VerifiedEnvelope) -> tuple[Device, str]:
        if verified.device_id != device_id:
            raise ForeignDevice("the envelope names another device than the one that sent it",
                                param="credentialSubject.device_id")
        device = self.market.devices.device(device_id)
        kid = verified.key.key_id
        key = device.key_for(kid, verified.sent_ms // 1000)  # not its key, rotated out, suspended: refused
        if key["public_key"] != verified.key.to_multibase():
            raise TraceSignatureInvalid("the envelope's key is not the one the device registered")
        return device, kid

    def _record(self, meta: dict[str, Any], device: Device, kid: str, verified: VerifiedEnvelope) -> dict[str, Any]:
        device_id, seq = verified.device_id, verified.entry.seq
        recorded = self._find(trace_id(device_id, seq))
        previous = self._find(trace_id(device_id, seq - 1)) if seq > 1 else None
        if check_chain(verified, recorded, previous, lambda: self.head(device_id, upper=seq - 2)):
            assert recorded is not None
            return {**recorded.to_public(), "status": "duplicate"}
        effect = self.effects(meta, device, verified)
        trace = Trace.record(meta, verified, kid=kid, effect=effect.outcome, effect_code=effect.code)
        signals = [Signal.make(trace_signal_id(device_id, seq), meta, device_id=device_id, kind=verified.entry.kind,
                               code=effect.code or "refused", at_ms=verified.sent_ms, seq=seq,
                               entry_hash=verified.entry.entry_hash, subject=effect.subject, detail=effect.detail)
                   ] if effect.signal else []
        self.save(trace, *effect.aggregates, *signals)
        return {**trace.to_public(), "status": "recorded"}

    def _find(self, aggregate_id: UUID) -> Trace | None:
        try:
            return self.load(Trace, aggregate_id, "trace")
        except NotFound:
            return None

    def head(self, device_id: str, upper: int | None = None) -> tuple[int, str]:
        """``(seq, entry_hash)`` of the device's last recorded entry (``(0, genesis)`` when none)."""
        exists: Callable[[int], bool] = lambda seq: self.exists(trace_id(device_id, seq))  # noqa: E731
        if upper is None:
            upper = 1
            while exists(upper):  # no bound known: double until past the head
                upper *= 2
        seq = head_search(exists, upper)
        found = self._find(trace_id(device_id, seq)) if seq else None
        return (seq, found.entry_hash) if found is not None else (0, GENESIS.hex())

    def _signal_refusal(self, meta: dict[str, Any], device_id: str, envelope: Any, exc: MarketError,
                        now_ms: int) -> None:
        facts = readable_facts(envelope)
        # No natural key: each refused message is its own fact (a replay of it is another one).
        self.save(Signal.make(uuid4(), meta, device_id=device_id, kind=facts["kind"], code=exc.code, at_ms=now_ms,
                              seq=facts["seq"], entry_hash=facts["entry_hash"], detail=exc.detail))

    def trace(self, device_id: str, seq: int) -> Trace:
        """One recorded trace (NotFound if it is not recorded)."""
        return self.load(Trace, trace_id(device_id, seq), "trace")
