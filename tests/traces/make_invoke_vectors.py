"""Regenerate ``tests/vectors/trace_envelope_invoke.json``: ``python -m tests.traces.make_invoke_vectors``.

The compute kinds of the trace envelope (``docs/protocol.md``, "Trace envelope"): a chain of
three outbox entries of the compute vectors' seller device (``tests/compute/make_vectors.py``):
``invoke_bound``, ``invoke_rejection`` (the signed rejection of ``invoke_receipts.json``) and
``invoke_final`` (its final receipt and the buyer's countersignature), each with its entry hash,
the two halves of the eddsa-jcs-2022 hash data and the envelope; ``negative`` holds envelopes
as JSON text with the code a verifier must answer. Deterministic (fixed keys, nonces, times).
Checked by ``tests/traces/test_invoke_envelopes.py``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from domain.model import envelope as env
from domain.model.jcs import canonical_json
from domain.model.vc import sign_credential
from tests.compute import make_vectors as compute

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
FILE = VECTORS / "trace_envelope_invoke.json"
RECEIPTS = json.loads((VECTORS / "invoke_receipts.json").read_text())
NOW_MS = compute.NOW_S * 1000 + 600_000
AUDIENCE = "https://hub.example"
DEVICE = compute.DEVICE


def chain() -> list[env.Entry]:
    """Three compute outbox entries, chained from the genesis hash."""
    final, countersignature = RECEIPTS["final"], RECEIPTS["countersignature"]
    subject = final["credentialSubject"]
    bodies = [
        ("invoke_bound", {"jti": subject["jti"], "invocation_id": subject["invocation_id"],
                          "listing_id": subject["listing_id"], "device_id": compute.DEVICE_ID,
                          "jkt": subject["buyer_jkt"], "bound_at_ms": compute.NOW_S * 1000 + 900}, NOW_MS - 9000),
        ("invoke_rejection", {"rejection": RECEIPTS["rejection"]}, NOW_MS - 5000),
        ("invoke_final", {"jti": subject["jti"], "invocation_id": subject["invocation_id"], "receipt": final,
                          "countersignature": countersignature}, NOW_MS - 1000),
    ]
    entries, prev = [], env.GENESIS
    for seq, (kind, body, created_ms) in enumerate(bodies, start=1):
        digest = env.entry_hash(prev, seq, kind, canonical_json(body), created_ms)
        entries.append(env.Entry(seq, kind, body, prev.hex(), digest.hex(), created_ms))
        prev = digest
    return entries


def nonce(n: int) -> str:
    return f"invoke-envelope-{n:06d}"  # 22 base64url characters: 16 bytes


def envelope(entry: env.Entry, n: int = 0) -> dict[str, Any]:
    return env.issue_envelope(entry, device_id=compute.DEVICE_ID, audience=AUDIENCE, key=DEVICE,
                              sent_ms=NOW_MS - 10 * n, nonce=nonce(n))


def _positive(entry: env.Entry, n: int) -> dict[str, Any]:
    signed = envelope(entry, n)
    proof_config = {k: v for k, v in signed["proof"].items() if k != "proofValue"}
    document = {k: v for k, v in signed.items() if k != "proof"}
    return {"entry": entry.to_json(), "body_jcs": canonical_json(entry.body).decode(),
            "proof_config_sha256": hashlib.sha256(canonical_json(proof_config)).hexdigest(),
            "document_sha256": hashlib.sha256(canonical_json(document)).hexdigest(),
            "envelope_bytes": len(canonical_json(signed)), "envelope": signed}


def _signed_with_body(entry: env.Entry, body: Any) -> str:
    """An envelope carrying ``body`` under a correct entry hash and signature (only the shape is wrong)."""
    digest = env.entry_hash(bytes.fromhex(entry.prev_hash), entry.seq, entry.kind, canonical_json(body),
                            entry.created_ms)
    entry_json = {**entry.to_json(), "body": body, "entry_hash": digest.hex()}
    unsigned = {"@context": list(env.CONTEXT), "type": ["VerifiableCredential", env.ENVELOPE_TYPE],
                "issuer": DEVICE.verify_key.did_key,
                "credentialSubject": {"device_id": compute.DEVICE_ID, "audience": AUDIENCE, "entry": entry_json}}
    return json.dumps(sign_credential(unsigned, DEVICE, created=env.format_created(NOW_MS), nonce=nonce(99)),
                      sort_keys=True)


def negatives(entries: list[env.Entry]) -> list[dict[str, Any]]:
    bound, rejection, final = entries
    cases = [
        ("invoke_bound with a member more", bound, {**bound.body, "price": 1}),
        ("invoke_bound without bound_at_ms", bound, {k: v for k, v in bound.body.items() if k != "bound_at_ms"}),
        ("invoke_bound with a listing id that is not a uuid", bound, {**bound.body, "listing_id": "echo"}),
        ("invoke_final whose receipt is a rejection", final, {**final.body, "receipt": RECEIPTS["rejection"]}),
        ("invoke_final whose countersignature is a receipt", final,
         {**final.body, "countersignature": RECEIPTS["billed"]}),
        ("invoke_final whose countersignature is text", final, {**final.body, "countersignature": "yes"}),
        ("invoke_final with a receipt member more", final,
         {**final.body, "receipt": {**copy.deepcopy(final.body["receipt"]), "note": "x"}}),
        ("invoke_rejection carrying a receipt", rejection, {"rejection": RECEIPTS["final"]}),
    ]
    return [{"name": name, "envelope_json": _signed_with_body(entry, body), "now_ms": NOW_MS,
             "code": "trace_envelope_invalid"} for name, entry, body in cases]


def build() -> dict[str, Any]:
    entries = chain()
    return {
        "about": "TraceEnvelope vectors of the compute kinds (docs/protocol.md, \"Trace envelope\"): regenerate "
                 "with python -m tests.traces.make_invoke_vectors",
        "device_seed_hex": compute.seed("device").hex(), "device_public_key": DEVICE.verify_key.to_multibase(),
        "device_id": compute.DEVICE_ID, "audience": AUDIENCE, "now_ms": NOW_MS, "skew_ms": env.SKEW_MS,
        "envelope_bytes_max": env.ENVELOPE_BYTES_MAX, "depth_max": env.DEPTH_MAX,
        "positive": [_positive(entry, n) for n, entry in enumerate(entries)],
        "negative": negatives(entries),
    }


def main() -> None:
    FILE.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {FILE}")


if __name__ == "__main__":
    main()
