"""Every signature the log carries, checked with the key that was valid at the event's time
(part of ``aimarket audit verify``, on the live database and on an export).

The walk feeds every decoded event in log order. Key state is rebuilt from the log itself,
in order: device keys from ``Device`` events (an enrolment starts a key, a rotation starts the
new key and ends the old one at the end of its grace, a suspension ends every signature of
the device after it), platform signing keys from ``Keyring`` events (``Created`` starts
``signing-1``, a rotation starts the next and honours the previous for its grace). For each
topic that carries a signature, :data:`CHECKS` names one function that decides which key must
have signed which bytes and hands that to ``ops.signature_pool`` (the CPU-bound part, on both
cores). What is checked, per topic:

* ``Device.KeyRotated``: the new key, signed by the key current before it;
* ``Listing.Published/Updated/Delisted``: the signing key (``proof.kid``) is a key of the
  listing's device (an update or delist: of a device of the listing's account), valid at the
  event's time, the device not suspended, and ``proof.created`` within the catalogue's window
  of the event's time; when the event records the proof value (``proof.proof_value``) the
  credential is rebuilt from the event and its signature and recorded digest are verified;
* ``Purchase.Purchased`` and ``Invocation.Opened``: the delivery (invoke) token's hub signature under the platform key its
  header names, valid at the event's time, and the event's ``kid``, ``jti``, ``cnf_jkt``,
  seller device and purchase (invocation) id equal to the signed claims;
* ``Trace.TraceRecorded``: the envelope's device signature under a key of the trace's device
  valid at the envelope's ``created`` (its ``kid`` the one recorded), the outbox entry hash; a
  receipt inside it is verified under a key of that device, a confirmation under the buyer key
  the purchase's token names (``cnf``); so are a compute session's final receipt and rejections
  (the device's key) and the buyer's countersignature (the invoke token's ``cnf``);
* ``Invocation.Captured/RejectionRecorded``: the final receipt (rejection) digest they hold must
  be one a recorded, signed trace carried;
* ``Purchase.ReceiptRecorded/ConfirmationRecorded/TokenRedeemed``: each must be what a
  recorded, signed trace carried (the receipt's or confirmation's digest; the redemption's
  token and buyer key);
* ``Channel.VoucherRecorded``: the buyer's EIP-712 voucher recovers the channel's wallet
  (given the chain's voucher domain; without it they are counted as not checked).

Signed tree heads are checked by ``ops.tree_audit`` (live) and the export checker. Stripe
webhooks leave no signature in the log (only the payment intent id they proved): nothing to
re-verify. Every violation names its log position, its topic and what failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domain.model.device import rotation_message
from domain.model.keys import VerifyKey, b64url_decode
from ops.signature_pool import POOL_AFTER_JOBS, Checker
from ops.signed_events import (
    KEY_SKEW_S,
    channel_opened,
    confirmation_recorded,
    invocation_captured,
    invocation_opened,
    listing,
    purchased,
    receipt_recorded,
    redeemed,
    rejection_recorded,
    trace,
    voucher,
)

PROBLEMS_MAX = 100


@dataclass
class DeviceKeys:
    """One device as the log says so far: its account, keys and whether it is suspended."""

    account_id: str
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # kid -> {raw, valid_until_s}
    current: str = ""
    suspended: bool = False


class SignatureAudit:
    """Fed every decoded event in log order; ``report`` lists what did not verify."""

    def __init__(self, platform_key: Callable[[str], bytes | None], *, voucher_domain: Any = None,
                 workers: int | None = None, pool_after_jobs: int = POOL_AFTER_JOBS) -> None:
        self.platform_key = platform_key  # kid -> raw public key (None: unknown)
        self.voucher_domain = voucher_domain
        self.checker = Checker(workers, pool_after_jobs)
        self.devices: dict[str, DeviceKeys] = {}
        self.device_of_kid: dict[str, str] = {}
        self.platform_windows: dict[str, list[int | None]] = {}  # kid -> [from s, until s]
        self.listings: dict[str, tuple[str, str]] = {}  # listing -> (account, device)
        self.purchases: dict[str, dict[str, str]] = {}  # purchase -> {cnf_jkt, device}
        self.invocations: dict[str, str] = {}  # invocation -> the invoke token's cnf jkt
        self.channels: dict[str, tuple[str, str]] = {}  # chain channel -> (wallet, chain channel id)
        self.traced: set[tuple[str, str]] = set()  # ("receipt"/"confirmation", digest), ("redemption", jti+jkt)
        self.recorded: list[tuple[int, str, str, tuple[str, str]]] = []  # facts a trace must have carried
        self.problems: list[tuple[int, str, str, str]] = []
        self.counts: dict[str, int] = {}
        self.unchecked: dict[str, int] = {}
        self._platform_raw: dict[str, bytes | None] = {}
        self._dids: dict[str, VerifyKey] = {}  # did:key -> key (parsed and point-checked once)
        self.state: bytes | None = None  # the fed event's stored JSON (None: not plain JSON, use the event)

    def did_key(self, did: Any) -> VerifyKey:
        """The key of a ``did:key`` (InvalidInput when it is none), parsed once per walk."""
        key = self._dids.get(did) if isinstance(did, str) else None
        if key is None:
            key = VerifyKey.from_did_key(did)
            if len(self._dids) < 100_000:
                self._dids[did] = key
        return key

    # -- the walk --------------------------------------------------------------------------
    def feed(self, position: int, topic: str, event: Any, state: bytes | None = None) -> None:
        """``state``: the stored record's bytes when they are the event's plain JSON (no cipher,
        no compression), so a check may hand the worker those bytes instead of a decoded dict."""
        check = CHECKS.get(topic)
        if check is not None:
            self.state = state
            check(self, position, _short(topic), event)

    def job(self, position: int, topic: str, what: str, kind: str, payload: Any, key: Any) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        self.checker.add((position, topic, what, kind, payload, key))

    def fail(self, position: int, topic: str, what: str, why: str) -> None:
        self.problems.append((position, topic, what, why))

    def skip(self, what: str) -> None:
        self.unchecked[what] = self.unchecked.get(what, 0) + 1

    def device_key(self, device_id: str, kid: str, at_s: int, *, any_time: bool = False) -> bytes | str:
        """The raw key ``kid`` of ``device_id`` if it could sign at ``at_s``; else why not."""
        device = self.devices.get(device_id)
        if device is None:
            return f"device {device_id} is not enrolled (no Device.Enrolled before this event)"
        key = device.keys.get(kid)
        if key is None:
            return f"key {kid} is not a key of device {device_id}"
        if any_time:
            return key["raw"]
        if device.suspended:
            return f"device {device_id} was suspended before this event"
        until = key["valid_until_s"]
        if until is not None and at_s >= until + KEY_SKEW_S:
            return f"key {kid} of device {device_id} was retired at {until}, before this event ({at_s})"
        return key["raw"]

    def hub_key(self, kid: str, at_s: int) -> bytes | str:
        """The platform signing key ``kid`` if it was valid at ``at_s``; else why not."""
        window = self.platform_windows.get(kid)
        if window is None:
            return f"platform key {kid} was never started by the keyring"
        if at_s < window[0] - KEY_SKEW_S or (window[1] is not None and at_s >= window[1] + KEY_SKEW_S):
            return f"platform key {kid} was not valid at {at_s}"
        if kid not in self._platform_raw:
            self._platform_raw[kid] = self.platform_key(kid)
        raw = self._platform_raw[kid]
        return raw if raw is not None else f"platform key {kid} is not known to this verifier (give it)"

    # -- the end ---------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        for position, topic, what, fact in self.recorded:
            if fact not in self.traced:
                self.fail(position, topic, what, "no recorded, signed trace carries it")
        failures = self.checker.finish()
        found = sorted(self.problems + failures)
        return {"ok": not found, "checked": dict(sorted(self.counts.items())), "verified_jobs": self.checker.checked,
                "pooled": self.checker.pooled, "workers": self.checker.workers,
                "not_checked": dict(sorted(self.unchecked.items())), "violations": len(found),
                "problems": [f"position {p}: {topic}: {what}: {why}" for p, topic, what, why in found[:PROBLEMS_MAX]]}

    def close(self) -> None:
        self.checker.close()


def _short(topic: str) -> str:
    return topic.rsplit(":", 1)[-1]


def _at_s(event: Any) -> int:
    return int(event.timestamp.timestamp())


def _raw(multibase: str) -> bytes:
    return VerifyKey.from_multibase(multibase).to_bytes()


# -- keys ------------------------------------------------------------------------------------
def _enrolled(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    device = audit.devices[str(e.originator_id)] = DeviceKeys(e.account_id)
    try:
        device.keys[e.kid] = {"raw": _raw(e.public_key), "valid_until_s": None}
    except Exception as exc:  # noqa: BLE001 - a malformed key is a finding
        audit.fail(position, topic, "device key", f"not an Ed25519 key: {exc}")
        return
    device.current = e.kid
    audit.device_of_kid[e.kid] = str(e.originator_id)


def _rotated(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    device_id = str(e.originator_id)
    device = audit.devices.get(device_id)
    if device is None or device.current not in device.keys:
        audit.fail(position, topic, "key rotation", f"device {device_id} has no key to rotate from")
        return
    old = device.keys[device.current]
    if e.previous_kid != device.current:
        audit.fail(position, topic, "key rotation", f"names {e.previous_kid} as the previous key, the log says "
                   f"{device.current}")
    try:
        message = rotation_message(device_id=device_id, public_key=e.public_key, kx_public_key=e.kx_public_key)
        audit.job(position, topic, "key rotation", "ed25519", (message, b64url_decode(e.signature)), old["raw"])
        raw = _raw(e.public_key)
    except Exception as exc:  # noqa: BLE001 - a malformed event is a finding
        audit.fail(position, topic, "key rotation", f"not checkable: {exc}")
        return
    for key in device.keys.values():
        if key["valid_until_s"] is None or key["valid_until_s"] > e.previous_valid_until_s:
            key["valid_until_s"] = e.previous_valid_until_s
    device.keys[e.kid] = {"raw": raw, "valid_until_s": None}
    device.current = e.kid
    audit.device_of_kid[e.kid] = device_id


def _suspended(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    device = audit.devices.get(str(e.originator_id))
    if device is not None:
        device.suspended = True


def _keyring_created(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    audit.platform_windows["signing-1"] = [_at_s(e), None]


def _keyring_rotated(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    if e.purpose != "signing":
        return
    for window in audit.platform_windows.values():
        if window[1] is None:
            window[1] = int(e.previous_valid_until_s)
    audit.platform_windows[e.new_kid] = [_at_s(e), None]



Check = Callable[[SignatureAudit, int, str, Any], None]
CHECKS: dict[str, Check] = {
    "domain.model.device:Device.Enrolled": _enrolled,
    "domain.model.device:Device.KeyRotated": _rotated,
    "domain.model.device:Device.Suspended": _suspended,
    "domain.model.keyring:Keyring.Created": _keyring_created,
    "domain.model.keyring:Keyring.Rotated": _keyring_rotated,
    "domain.model.listing:Listing.Published": listing,
    "domain.model.listing:Listing.Updated": listing,
    "domain.model.listing:Listing.Delisted": listing,
    "domain.model.purchase:Purchase.Purchased": purchased,
    "domain.model.purchase:Purchase.TokenRedeemed": redeemed,
    "domain.model.invocation:Invocation.Opened": invocation_opened,
    "domain.model.invocation:Invocation.Captured": invocation_captured,
    "domain.model.invocation:Invocation.RejectionRecorded": rejection_recorded,
    "domain.model.purchase:Purchase.ReceiptRecorded": receipt_recorded,
    "domain.model.purchase:Purchase.ConfirmationRecorded": confirmation_recorded,
    "domain.model.traces:Trace.TraceRecorded": trace,
    "domain.model.channel:Channel.Opened": channel_opened,
    "domain.model.channel:Channel.VoucherRecorded": voucher,
}
"""Topic -> check: one entry per event type that carries a signature or key state."""
