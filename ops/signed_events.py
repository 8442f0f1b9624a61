"""The checks of ``ops.signature_audit`` for what devices and the hub signed: listings, hub
tokens, trace envelopes with the receipts and confirmations they carry, the purchase facts a
trace must have carried, vouchers. Each takes ``(audit, position, topic, event)``, decides
which key must have signed which bytes (from the audit's key state) and hands the job to the
audit, or records why it cannot hold."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from domain.model.delivery import jwk_thumbprint
from domain.model.keys import VerifyKey, b64url_decode
from domain.model.listing_schema import VC_CONTEXT, unsigned_credential
from domain.model.vc import DATA_INTEGRITY_PROOF, EDDSA_JCS_2022

if TYPE_CHECKING:
    from ops.signature_audit import SignatureAudit

CATALOGUE_WINDOW_S = 300  # domain.app.catalogue: proof.created within this of the hub clock
KEY_SKEW_S = 60  # the hub checks a key a moment before the event's timestamp is taken


def _at_s(event: Any) -> int:
    return int(event.timestamp.timestamp())


def listing(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
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


def purchased(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    audit.purchases[str(e.originator_id)] = {"cnf_jkt": e.cnf_jkt, "device": e.seller_device_id}
    _hub_token(audit, position, topic, e, "delivery token")


def invocation_opened(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    audit.invocations[str(e.originator_id)] = e.cnf_jkt
    _hub_token(audit, position, topic, e, "invoke token")


def invocation_captured(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    audit.recorded.append((position, topic, "recorded compute receipt", ("invoke_receipt", e.receipt)))


def rejection_recorded(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    audit.recorded.append((position, topic, "recorded rejection", ("invoke_rejection", e.digest)))


def _hub_token(audit: SignatureAudit, position: int, topic: str, e: Any, what: str) -> None:
    """A hub-signed compact JWS recorded in the event (delivery and invoke tokens share the
    claims the event repeats: kid, jti, cnf, audience device, subject = the aggregate)."""
    purchase_id = str(e.originator_id)
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
                "subject id": purchase_id}
    signed = {"kid": kid, "jti": claims.get("jti"), "cnf_jkt": (claims.get("cnf") or {}).get("jkt"),
              "seller_device_id": claims.get("aud"), "subject id": claims.get("sub")}
    wrong = sorted(name for name in recorded if recorded[name] != signed[name])
    if wrong:
        audit.fail(position, topic, what, f"the event differs from the signed claims on {wrong}")
    audit.job(position, topic, what, "ed25519", (f"{header_b64}.{payload_b64}".encode("ascii"), signature), key)


def _json(segment: str) -> Any:
    return json.loads(b64url_decode(segment))


def trace(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
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
    if isinstance(audit.state, bytes):  # the worker parses the stored bytes: no dict to pickle
        audit.job(position, topic, "trace envelope", "envelope", audit.state, key)
    else:
        audit.job(position, topic, "trace envelope", "vc", (envelope, None, True), key)
    if e.effect == "refused":  # the hub refused what it carries (a lying receipt): a signal, no fact to prove
        audit.skip(f"{entry.get('kind')} the hub refused")
        return
    _trace_body(audit, position, topic, device_id, entry)


def _created_ms(envelope: dict[str, Any]) -> int:
    from domain.model.envelope import parse_created

    return parse_created(envelope["proof"]["created"])


def _trace_body(audit: SignatureAudit, position: int, topic: str, device_id: str, entry: dict[str, Any]) -> None:
    kind, body = entry.get("kind"), entry.get("body")
    if kind in ("invoke_final", "invoke_rejection") and isinstance(body, dict):
        _invoke_body(audit, position, topic, device_id, kind, body)
        return
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


def _invoke_body(audit: SignatureAudit, position: int, topic: str, device_id: str, kind: str,
                 body: dict[str, Any]) -> None:
    """A compute session's final receipt and the buyer's countersignature, or a rejection: the
    device signs receipts and rejections, the token's ``cnf`` key countersigns."""
    from domain.model.invoke_receipts import digest

    items = ([("compute receipt in trace", "invoke_receipt", body.get("receipt"), False),
              ("countersignature in trace", "invoke_countersignature", body.get("countersignature"), True)]
             if kind == "invoke_final" else [("rejection in trace", "invoke_rejection", body.get("rejection"), False)])
    for what, fact, vc, by_buyer in items:
        if vc is None:  # a session closed with nothing countersigned
            continue
        try:
            signer = audit.did_key(vc["issuer"])
            recorded_digest = digest(vc)
            invocation_id = str((vc.get("credentialSubject") or {}).get("invocation_id"))
        except Exception as exc:  # noqa: BLE001 - a malformed credential is a finding
            audit.fail(position, topic, what, f"not a credential: {exc}")
            continue
        if by_buyer:
            cnf_jkt = audit.invocations.get(invocation_id)
            if cnf_jkt is not None and jwk_thumbprint(signer) != cnf_jkt:
                audit.fail(position, topic, what, "not signed by the buyer key the invoke token names (cnf)")
                continue
            key: Any = signer.to_bytes()
        else:
            key = audit.device_key(device_id, signer.key_id, 0, any_time=True)  # it may have waited in the outbox
            if isinstance(key, str):
                audit.fail(position, topic, what, f"not signed by a key of the reporting device: {key}")
                continue
        audit.traced.add((fact, recorded_digest))
        audit.job(position, topic, what, "vc", (vc, None, False), key)


def receipt_recorded(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    audit.recorded.append((position, topic, "recorded receipt", ("receipt", e.digest)))


def confirmation_recorded(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    audit.recorded.append((position, topic, "recorded confirmation", ("confirmation", e.digest)))


def redeemed(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    audit.recorded.append((position, topic, "recorded redemption", ("redemption", f"{e.jti} {e.buyer_jkt}")))


def channel_opened(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
    if e.rail == "chain":
        audit.channels[str(e.originator_id)] = (e.buyer_wallet, e.chain_channel_id)


def voucher(audit: SignatureAudit, position: int, topic: str, e: Any) -> None:
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
