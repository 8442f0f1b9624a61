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
* ``Purchase.Purchased``: the delivery token's hub signature under the platform key its
  header names, valid at the event's time, and the event's ``kid``, ``jti``, ``cnf_jkt``,
  seller device and purchase id equal to the signed claims;
* ``Trace.TraceRecorded``: the envelope's device signature under a key of the trace's device
  valid at the envelope's ``created`` (its ``kid`` the one recorded), the outbox entry hash; a
  receipt inside it is verified under a key of that device, a confirmation under the buyer key
  the purchase's token names (``cnf``);
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

from domain.model.delivery import jwk_thumbprint
from domain.model.device import rotation_message
from domain.model.keys import VerifyKey, b64url_decode
from domain.model.listing_schema import VC_CONTEXT, unsigned_credential
from domain.model.vc import DATA_INTEGRITY_PROOF, EDDSA_JCS_2022
from ops.signature_pool import POOL_AFTER_JOBS, Checker

CATALOGUE_WINDOW_S = 300  # domain.app.catalogue: proof.created within this of the hub clock
KEY_SKEW_S = 60  # the hub checks a key a moment before the event's timestamp is taken
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
        self.channels: dict[str, tuple[str, str]] = {}  # chain channel -> (wallet, chain channel id)
        self.traced: set[tuple[str, str]] = set()  # ("receipt"/"confirmation", digest), ("redemption", jti+jkt)
        self.recorded: list[tuple[int, str, str, tuple[str, str]]] = []  # facts a trace must have carried
        self.problems: list[tuple[int, str, str, str]] = []
        self.counts: dict[str, int] = {}
        self.unchecked: dict[str, int] = {}
        self._platform_raw: dict[str, bytes | None] = {}
        self._dids: dict[str, VerifyKey] = {}  # did:key -> key (parsed and point-checked once)

    def did_key(self, did: Any) -> VerifyKey:
        """The key of a ``did:key`` (InvalidInput when it is none), parsed once per walk."""
        key = self._dids.get(did) if isinstance(did, str) else None
        if key is None:
            key = VerifyKey.from_did_key(did)
            if len(self._dids) < 100_000:
                self._dids[did] = key
        return key

    # -- the walk --------------------------------------------------------------------------
    def feed(self, position: int, topic: str, event: Any) -> None:
        check = CHECKS.get(topic)
        if check is not None:
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


# -- what devices and the hub signed -----------------------------------------------------------
def _listing(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    listing_id = str(e.originator_id)
    kind = topic.rsplit(".", 1)[-1]
    proof = e.proof if isinstance(getattr(e, "proof", None), dict) else {}
    if kind == "Published":
        audit.listings[listing_id] = (e.account_id, e.device_id)
    owner = audit.listings.get(listing_id)
    kid = proof.get("kid")
    if owner is None or not isinstance(kid, str):
        audit.fail(position, topic, "listing signature", "no published listing or no signing key recorded")
        return
    device_id = audit.device_of_kid.get(kid)
    if device_id is None:
        audit.fail(position, topic, "listing signature", f"signed by key {kid}, which no enrolled device holds "
                   "(no Device.Enrolled or KeyRotated with it before this event)")
        return
    if kind == "Published" and device_id != owner[1]:
        audit.fail(position, topic, "listing signature", f"signed by key {kid}, not a key of device {owner[1]}")
        return
    if kind != "Published" and (audit.devices.get(device_id) is None or audit.devices[device_id].account_id
                                != owner[0]):
        audit.fail(position, topic, "listing signature", f"signed by key {kid}, not a device of account {owner[0]}")
        return
    at_s = _at_s(e)
    key = audit.device_key(device_id, kid, at_s)
    if isinstance(key, str):
        audit.fail(position, topic, "listing signature", key)
        return
    created = _created_s(proof.get("created"))
    if created is None or abs(created - at_s) > CATALOGUE_WINDOW_S + KEY_SKEW_S:
        audit.fail(position, topic, "listing signature", f"proof.created {proof.get('created')!r} is not within "
                   f"{CATALOGUE_WINDOW_S} s of the event's time")
        return
    credential = _listing_credential(kind, listing_id, e, proof, key)
    if credential is None:
        audit.skip("listing signature (proof value not recorded)")
        return
    audit.job(position, topic, "listing signature", "vc", (credential, proof.get("credential_digest"), False), key)


def _created_s(text: Any) -> int | None:
    from domain.model.vc_datetime import parse_xsd_datetime

    try:
        return int(parse_xsd_datetime(text).timestamp())
    except Exception:  # noqa: BLE001 - malformed: the caller reports it
        return None


def _listing_credential(kind: str, listing_id: str, e: Any, proof: dict[str, Any], key: bytes) -> dict | None:
    """The credential the node signed, rebuilt from the event (None without its proof value)."""
    if not isinstance(proof.get("proof_value"), str):
        return None
    verify_key = VerifyKey(key)
    if kind == "Delisted":
        subject: dict[str, Any] = {"action": "delist", "listing_id": listing_id}
        if e.reason:
            subject["reason"] = e.reason
    else:
        offer = {**e.metadata, "price_minor": e.price_minor, "currency": e.currency}
        subject = ({"action": "publish", "listing_key": e.listing_key, "listing": offer} if kind == "Published"
                   else {"action": "update", "listing_id": listing_id, "listing": offer})
    credential = unsigned_credential(verify_key.did_key, proof["created"], subject)
    credential["proof"] = {"type": DATA_INTEGRITY_PROOF, "cryptosuite": EDDSA_JCS_2022, "created": proof["created"],
                           "verificationMethod": verify_key.verification_method, "proofPurpose": "assertionMethod",
                           "nonce": proof.get("nonce"), "@context": list(VC_CONTEXT),
                           "proofValue": proof["proof_value"]}
    return credential


def _purchased(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    purchase_id = str(e.originator_id)
    audit.purchases[purchase_id] = {"cnf_jkt": e.cnf_jkt, "device": e.seller_device_id}
    what = "delivery token"
    try:
        header_b64, payload_b64, signature_b64 = e.token.split(".")
        header = _json(header_b64)
        claims = _json(payload_b64)
        signature = b64url_decode(signature_b64)
    except Exception as exc:  # noqa: BLE001 - a malformed token is a finding
        audit.fail(position, topic, what, f"not a compact JWS: {exc}")
        return
    kid = header.get("kid") if isinstance(header, dict) else None
    key = audit.hub_key(kid, _at_s(e)) if isinstance(kid, str) else "the token's header names no key"
    if isinstance(key, str):
        audit.fail(position, topic, what, key)
        return
    recorded = {"kid": e.kid, "jti": e.jti, "cnf_jkt": e.cnf_jkt, "seller_device_id": e.seller_device_id,
                "purchase id": purchase_id}
    signed = {"kid": kid, "jti": claims.get("jti"), "cnf_jkt": (claims.get("cnf") or {}).get("jkt"),
              "seller_device_id": claims.get("aud"), "purchase id": claims.get("sub")}
    wrong = sorted(name for name in recorded if recorded[name] != signed[name])
    if wrong:
        audit.fail(position, topic, what, f"the event differs from the signed claims on {wrong}")
    audit.job(position, topic, what, "ed25519", (f"{header_b64}.{payload_b64}".encode("ascii"), signature), key)


def _json(segment: str) -> Any:
    import json

    return json.loads(b64url_decode(segment))


def _trace(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    envelope = e.envelope
    try:
        issuer = audit.did_key(envelope["issuer"])
        sent_s = _created_ms(envelope) // 1000
        entry = envelope["credentialSubject"]["entry"]
    except Exception as exc:  # noqa: BLE001 - a malformed envelope is a finding
        audit.fail(position, topic, "trace envelope", f"not an envelope: {exc}")
        return
    device_id = e.device_id
    if envelope["credentialSubject"].get("device_id") != device_id or entry.get("seq") != e.seq or entry.get(
            "entry_hash") != e.entry_hash:
        audit.fail(position, topic, "trace envelope", "the event differs from the signed envelope on its device, "
                   "seq or entry hash")
    if issuer.key_id != e.kid:
        audit.fail(position, topic, "trace envelope", f"recorded key {e.kid} is not the envelope's signer")
    key = audit.device_key(device_id, issuer.key_id, sent_s)
    if isinstance(key, str):
        audit.fail(position, topic, "trace envelope", key)
        return
    audit.job(position, topic, "trace envelope", "vc", (envelope, None, True), key)
    _trace_body(audit, position, topic, device_id, entry)


def _created_ms(envelope: dict[str, Any]) -> int:
    from domain.model.envelope import parse_created

    return parse_created(envelope["proof"]["created"])


def _trace_body(audit: SignatureAudit, position: int, topic: str, device_id: str, entry: dict[str, Any]) -> None:
    kind, body = entry.get("kind"), entry.get("body")
    if kind == "redemption" and isinstance(body, dict):
        audit.traced.add(("redemption", f"{body.get('jti')} {body.get('jkt')}"))
        return
    if kind not in ("receipt", "confirmation") or not isinstance(body, dict):
        return
    from domain.model.receipts import digest

    what = f"{kind} in trace"
    try:
        signer = audit.did_key(body["issuer"])
        recorded_digest = digest(body)
    except Exception as exc:  # noqa: BLE001 - a malformed credential is a finding
        audit.fail(position, topic, what, f"not a credential: {exc}")
        return
    if kind == "receipt":
        key = audit.device_key(device_id, signer.key_id, 0, any_time=True)  # it may have waited in the outbox
        if isinstance(key, str):
            audit.fail(position, topic, what, f"not signed by a key of the reporting device: {key}")
            return
    else:
        purchase = audit.purchases.get(str((body.get("credentialSubject") or {}).get("purchase_id")))
        if purchase is not None and jwk_thumbprint(signer) != purchase["cnf_jkt"]:
            audit.fail(position, topic, what, "not signed by the buyer key the purchase's token names (cnf)")
            return
        key = signer.to_bytes()
    audit.traced.add((kind, recorded_digest))
    audit.job(position, topic, what, "vc", (body, None, False), key)


def _receipt_recorded(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    audit.recorded.append((position, topic, "recorded receipt", ("receipt", e.digest)))


def _confirmation_recorded(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    audit.recorded.append((position, topic, "recorded confirmation", ("confirmation", e.digest)))


def _redeemed(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    audit.recorded.append((position, topic, "recorded redemption", ("redemption", f"{e.jti} {e.buyer_jkt}")))


def _channel_opened(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    if e.rail == "chain":
        audit.channels[str(e.originator_id)] = (e.buyer_wallet, e.chain_channel_id)


def _voucher(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    channel = audit.channels.get(str(e.originator_id))
    if channel is None:
        audit.fail(position, topic, "voucher", "a voucher on a channel that is not a chain channel")
        return
    if audit.voucher_domain is None:
        audit.skip("voucher (no chain domain: run with --chain)")
        return
    d = audit.voucher_domain
    audit.job(position, topic, "voucher", "voucher",
              (d.chain_id, d.verifying_contract, channel[1], e.cumulative_minor, e.signature), channel[0])


Check = Callable[[SignatureAudit, int, str, Any], None]
CHECKS: dict[str, Check] = {
    "domain.model.device:Device.Enrolled": _enrolled,
    "domain.model.device:Device.KeyRotated": _rotated,
    "domain.model.device:Device.Suspended": _suspended,
    "domain.model.keyring:Keyring.Created": _keyring_created,
    "domain.model.keyring:Keyring.Rotated": _keyring_rotated,
    "domain.model.listing:Listing.Published": _listing,
    "domain.model.listing:Listing.Updated": _listing,
    "domain.model.listing:Listing.Delisted": _listing,
    "domain.model.purchase:Purchase.Purchased": _purchased,
    "domain.model.purchase:Purchase.TokenRedeemed": _redeemed,
    "domain.model.purchase:Purchase.ReceiptRecorded": _receipt_recorded,
    "domain.model.purchase:Purchase.ConfirmationRecorded": _confirmation_recorded,
    "domain.model.traces:Trace.TraceRecorded": _trace,
    "domain.model.channel:Channel.Opened": _channel_opened,
    "domain.model.channel:Channel.VoucherRecorded": _voucher,
}
"""Topic -> check: one entry per event type that carries a signature or key state."""
