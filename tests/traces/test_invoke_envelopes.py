"""The compute kinds of the trace envelope (``tests/vectors/trace_envelope_invoke.json``): our code
verifies each positive and refuses each negative; an independent reading of docs/protocol.md
(hashlib, struct, rfc8785, PyNaCl) reproduces each entry hash and signature; and the bounds
(``ENVELOPE_BYTES_MAX``, ``DEPTH_MAX``) leave room for the largest final receipt."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import base58
import nacl.signing
import pytest
import rfc8785

from domain.model import envelope as env
from domain.model.delivery import json_depth
from domain.model.errors import MarketError
from domain.model.jcs import canonical_json
from tests.traces import make_invoke_vectors

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "trace_envelope_invoke.json").read_text())


def lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_the_file_is_what_the_generator_makes() -> None:
    assert json.loads(json.dumps(make_invoke_vectors.build())) == VECTORS


def test_one_envelope_of_each_compute_kind() -> None:
    assert [v["entry"]["kind"] for v in VECTORS["positive"]] == ["invoke_bound", "invoke_rejection", "invoke_final"]


@pytest.mark.parametrize("vector", VECTORS["positive"], ids=lambda v: v["entry"]["kind"])
def test_positive_envelopes_verify(vector: dict) -> None:
    verified = env.verify_envelope(vector["envelope"], audience=VECTORS["audience"], now_ms=VECTORS["now_ms"])
    assert verified.entry.to_json() == vector["entry"] and verified.device_id == VECTORS["device_id"]
    raw = json.dumps(vector["envelope"]).encode()
    assert env.verify_envelope(env.parse_envelope(raw), audience=VECTORS["audience"],
                               now_ms=VECTORS["now_ms"]).entry == verified.entry


def test_the_chain_by_the_spec() -> None:
    prev = bytes(32)
    for vector in VECTORS["positive"]:
        entry = vector["entry"]
        body_jcs = rfc8785.dumps(entry["body"])
        assert body_jcs.decode() == vector["body_jcs"]
        digest = hashlib.sha256(lp(b"aimarket/outbox/v1") + lp(prev) + struct.pack(">Q", entry["seq"])
                                + lp(entry["kind"].encode()) + lp(body_jcs) + struct.pack(">Q", entry["created_ms"]))
        assert entry["prev_hash"] == prev.hex() and entry["entry_hash"] == digest.hexdigest()
        prev = digest.digest()


@pytest.mark.parametrize("vector", VECTORS["positive"], ids=lambda v: v["entry"]["kind"])
def test_the_signature_by_the_spec(vector: dict) -> None:
    signed = vector["envelope"]
    options = {k: v for k, v in signed["proof"].items() if k != "proofValue"}
    document = {k: v for k, v in signed.items() if k != "proof"}
    assert hashlib.sha256(rfc8785.dumps(options)).hexdigest() == vector["proof_config_sha256"]
    assert hashlib.sha256(rfc8785.dumps(document)).hexdigest() == vector["document_sha256"]
    data = bytes.fromhex(vector["proof_config_sha256"]) + bytes.fromhex(vector["document_sha256"])
    public = nacl.signing.SigningKey(bytes.fromhex(VECTORS["device_seed_hex"])).verify_key
    public.verify(data, base58.b58decode(signed["proof"]["proofValue"][1:]))
    assert len(rfc8785.dumps(signed)) == vector["envelope_bytes"]


@pytest.mark.parametrize("vector", VECTORS["negative"], ids=lambda v: v["name"])
def test_negative_envelopes_are_refused_with_their_code(vector: dict) -> None:
    with pytest.raises(MarketError) as caught:
        env.verify_envelope(env.parse_envelope(vector["envelope_json"].encode()), audience=VECTORS["audience"],
                            now_ms=vector["now_ms"])
    assert caught.value.code == vector["code"], caught.value.detail


def test_a_final_report_without_a_countersignature_is_well_formed() -> None:
    body = dict(VECTORS["positive"][2]["entry"]["body"], countersignature=None)
    assert env.check_body("invoke_final", body) is body


def test_the_largest_final_report_fits_the_bounds() -> None:
    """Every text field of the receipt and countersignature at its longest (256 ASCII), every
    integer at 2**53 − 1: still well under the size bound, and no deeper than the vectors."""
    final = json.loads(json.dumps(VECTORS["positive"][2]))
    body = final["entry"]["body"]
    for vc in (body["receipt"], body["countersignature"]):
        for name, value in vc["credentialSubject"].items():
            if isinstance(value, str):
                vc["credentialSubject"][name] = "x" * 256
            elif type(value) is int:
                vc["credentialSubject"][name] = 2**53 - 1
        vc["proof"]["nonce"] = "n" * 86
    entry = env.Entry(1, "invoke_final", body, env.GENESIS.hex(),
                      env.entry_hash(env.GENESIS, 1, "invoke_final", canonical_json(body), 1).hex(), 1)
    signed = env.issue_envelope(entry, device_id=VECTORS["device_id"], audience=VECTORS["audience"],
                                key=make_invoke_vectors.DEVICE, sent_ms=VECTORS["now_ms"], nonce="n" * 86)
    size = len(canonical_json(signed))
    assert size < env.ENVELOPE_BYTES_MAX // 4, size  # 7,625 bytes against 64 KiB
    assert json_depth(canonical_json(signed)) == 7 < env.DEPTH_MAX
