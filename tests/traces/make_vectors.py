"""Regenerate ``tests/vectors/trace_envelope.json``: ``python -m tests.traces.make_vectors``.

Ours (the envelope is this protocol's): fixed keys, nonces and times give fixed envelopes
(Ed25519 and JCS are deterministic). ``positive`` is a chain of four outbox entries (a
redemption, a receipt, a heartbeat written hours before it is sent, a refusal), each with its
entry hash, the two halves of the eddsa-jcs-2022 hash data and the envelope. ``negative``
holds envelopes as JSON text (so duplicate members and nesting can be expressed), the hub clock
and the code a verifier must answer. Checked by ``tests/traces/test_vectors.py``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from domain.model import envelope as env
from domain.model.jcs import canonical_json
from domain.model.keys import SigningKey
from domain.model.receipts import issue_receipt

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
FILE = VECTORS / "trace_envelope.json"
NOW_MS = 1_800_000_000_000
AUDIENCE = "https://hub.example"
DEVICE_ID = "3f1c2b9e-6d7a-5e4f-8a9b-0c1d2e3f4a5b"
JTI = "vector-token-000000001"
PURCHASE = "9a1d8c2e-0f3b-5e6d-8c7b-6a5f4e3d2c1b"
JKT = "Wk3aTq1k9yM2n0pG8xYb7cD5eF6gH4iJ3kL2mN1oP0q"


def seed(name: str) -> bytes:
    return hashlib.sha256(b"aimarket trace vectors/" + name.encode()).digest()


DEVICE = SigningKey.from_seed(seed("device"))
OTHER = SigningKey.from_seed(seed("other"))


def _receipt() -> dict[str, Any]:
    subject = {"purchase_id": PURCHASE, "jti": JTI, "device_id": DEVICE_ID,
               "listing_id": "0b7e6f0e-1d2c-5b3a-9f8e-7d6c5b4a3f2e", "listing_version": 1,
               "content_hash": "sha256-" + "A" * 43 + "=", "size_bytes": 9600, "blocks_root": "B" * 43,
               "buyer_jkt": JKT, "seq": 1, "sessions": 1, "session": "C" * 43, "bytes_sent": 9600,
               "intervals": [[0, 9600]], "first_byte_ms": NOW_MS - 5000, "last_byte_ms": NOW_MS - 4000,
               "blocks_acked": 3, "outcome": "interrupted", "confirmation": None}
    return issue_receipt(subject, DEVICE, now_ms=NOW_MS - 3000, nonce="vector-receipt-nonce")


def chain() -> list[env.Entry]:
    """Four outbox entries, chained from the genesis hash."""
    bodies = [
        ("redemption", {"jti": JTI, "purchase_id": PURCHASE, "listing_id": "0b7e6f0e-1d2c-5b3a-9f8e-7d6c5b4a3f2e",
                        "device_id": DEVICE_ID, "jkt": JKT, "bound_at_ms": NOW_MS - 6000}, NOW_MS - 6000),
        ("receipt", _receipt(), NOW_MS - 3000),
        ("heartbeat", {"started_ms": NOW_MS - 4 * 3600_000, "uptime_s": 3 * 3600, "outbox_pending": 2},
         NOW_MS - 3600_000),  # written an hour before it is sent: created_ms is not skew-checked
        ("refusal", {"jti": JTI, "purchase_id": PURCHASE, "jkt": "D" * 43, "code": "delivery_token_bound",
                     "at_ms": NOW_MS - 1000}, NOW_MS - 1000),
    ]
    entries, prev = [], env.GENESIS
    for seq, (kind, body, created_ms) in enumerate(bodies, start=1):
        digest = env.entry_hash(prev, seq, kind, canonical_json(body), created_ms)
        entries.append(env.Entry(seq, kind, body, prev.hex(), digest.hex(), created_ms))
        prev = digest
    return entries


def nonce(n: int) -> str:
    return f"vector-nonce-{n:09d}"  # 22 base64url characters: 16 bytes


def envelope(entry: env.Entry, *, key: SigningKey = DEVICE, sent_ms: int = NOW_MS, audience: str = AUDIENCE,
             n: int = 0) -> dict[str, Any]:
    return env.issue_envelope(entry, device_id=DEVICE_ID, audience=audience, key=key, sent_ms=sent_ms, nonce=nonce(n))


def _positive(entry: env.Entry, n: int) -> dict[str, Any]:
    signed = envelope(entry, sent_ms=NOW_MS - 10 * n, n=n)
    proof_config = {k: v for k, v in signed["proof"].items() if k != "proofValue"}
    document = {k: v for k, v in signed.items() if k != "proof"}
    return {"entry": entry.to_json(), "body_jcs": canonical_json(entry.body).decode(),
            "proof_config_sha256": hashlib.sha256(canonical_json(proof_config)).hexdigest(),
            "document_sha256": hashlib.sha256(canonical_json(document)).hexdigest(),
            "envelope": signed}


def _resign(unsigned: dict[str, Any], key: SigningKey, sent_ms: int = NOW_MS) -> dict[str, Any]:
    from domain.model.vc import sign_credential

    return sign_credential(unsigned, key, created=env.format_created(sent_ms), nonce=nonce(99))


def _unsigned(signed: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in signed.items() if k != "proof"}


def negatives(entries: list[env.Entry]) -> list[dict[str, Any]]:
    good = envelope(entries[0])
    text = json.dumps(good, sort_keys=True)
    out: list[tuple[str, str, str]] = []

    def case(name: str, value: Any, code: str) -> None:
        out.append((name, value if isinstance(value, str) else json.dumps(value, sort_keys=True), code))

    tampered = copy.deepcopy(good)
    tampered["credentialSubject"]["entry"]["body"]["bound_at_ms"] += 1
    case("a body field changed after signing", tampered, "trace_signature_invalid")
    rehash = _unsigned(good)
    rehash["credentialSubject"]["entry"]["entry_hash"] = "0" * 64
    case("entry_hash not the entry's (signed)", _resign(rehash, DEVICE), "trace_entry_hash_mismatch")
    case("signed for another hub", envelope(entries[0], audience="https://other-hub.example"), "trace_wrong_audience")
    case("sent 31 s before the hub clock", envelope(entries[0], sent_ms=NOW_MS - 31_000), "trace_clock_skew")
    case("sent 31 s after the hub clock", envelope(entries[0], sent_ms=NOW_MS + 31_000), "trace_clock_skew")
    foreign = _unsigned(good)
    signed_by_other = _resign(foreign, OTHER)
    signed_by_other["issuer"] = good["issuer"]
    signed_by_other["proof"]["verificationMethod"] = good["proof"]["verificationMethod"]
    case("issuer is the device, proof by another key", signed_by_other, "trace_signature_invalid")
    extra = _unsigned(good)
    extra["credentialSubject"]["note"] = "hi"
    case("an unknown subject member", _resign(extra, DEVICE), "trace_envelope_invalid")
    short = copy.deepcopy(good)
    short["proof"]["nonce"] = "A" * 21  # 15 bytes
    case("a nonce under 128 bits", short, "trace_envelope_invalid")
    seconds = copy.deepcopy(good)
    seconds["proof"]["created"] = "2027-01-15T08:00:00Z"
    case("proof.created without milliseconds", seconds, "trace_envelope_invalid")
    case("a duplicate member name", text[:-1] + ', "type": ["VerifiableCredential", "TraceEnvelope"]}',
         "trace_envelope_invalid")
    deep = _unsigned(good)
    deep["credentialSubject"]["entry"]["body"] = {"a": [[[[[[1]]]]]]}
    case("nested deeper than 8 levels", deep, "trace_envelope_invalid")
    unknown_kind = _unsigned(good)
    unknown_kind["credentialSubject"]["entry"]["kind"] = "invoice"
    case("an unknown entry kind", _resign(unknown_kind, DEVICE), "trace_envelope_invalid")
    beat = envelope(entries[2])
    beat["credentialSubject"]["entry"]["body"]["uptime_s"] = 1.5
    case("a float in a body", beat, "trace_envelope_invalid")
    purpose = _unsigned(good)
    purpose_signed = _resign(purpose, DEVICE)
    purpose_signed["proof"]["proofPurpose"] = "authentication"
    case("another proof purpose", purpose_signed, "trace_envelope_invalid")
    return [{"name": name, "envelope_json": value, "now_ms": NOW_MS, "code": code} for name, value, code in out]


def build() -> dict[str, Any]:
    entries = chain()
    return {
        "about": "TraceEnvelope vectors (docs/protocol.md, \"Traces\"): regenerate with "
                 "python -m tests.traces.make_vectors",
        "device_seed_hex": seed("device").hex(), "device_public_key": DEVICE.verify_key.to_multibase(),
        "device_id": DEVICE_ID, "audience": AUDIENCE, "now_ms": NOW_MS, "skew_ms": env.SKEW_MS,
        "envelope_bytes_max": env.ENVELOPE_BYTES_MAX, "depth_max": env.DEPTH_MAX,
        "positive": [_positive(entry, n) for n, entry in enumerate(entries)],
        "negative": negatives(entries),
    }


def main() -> None:
    FILE.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {FILE}")


if __name__ == "__main__":
    main()
