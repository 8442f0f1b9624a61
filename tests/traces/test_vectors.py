"""The trace envelope vectors (``tests/vectors/trace_envelope.json``), checked two ways: our code
verifies every positive and answers each negative's code, and an independent reading of
docs/protocol.md ("Traces": hashlib, struct, rfc8785 and PyNaCl called directly) reproduces
each entry hash and signature."""

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
from domain.model.errors import MarketError
from domain.model.keys import VerifyKey
from tests.traces import make_vectors

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "trace_envelope.json").read_text())


def lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_the_file_is_what_the_generator_makes() -> None:
    assert json.loads(json.dumps(make_vectors.build())) == VECTORS


@pytest.mark.parametrize("vector", VECTORS["positive"], ids=lambda v: v["entry"]["kind"])
def test_positive_envelopes_verify(vector: dict) -> None:
    verified = env.verify_envelope(vector["envelope"], audience=VECTORS["audience"], now_ms=VECTORS["now_ms"])
    assert verified.entry.to_json() == vector["entry"]
    assert verified.device_id == VECTORS["device_id"]
    assert verified.key == VerifyKey.from_multibase(VECTORS["device_public_key"])
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
    """eddsa-jcs-2022: Ed25519 over SHA-256(JCS(proof options)) || SHA-256(JCS(document))."""
    signed = vector["envelope"]
    proof = signed["proof"]
    options = {k: v for k, v in proof.items() if k != "proofValue"}
    document = {k: v for k, v in signed.items() if k != "proof"}
    assert options["@context"] == document["@context"]
    assert hashlib.sha256(rfc8785.dumps(options)).hexdigest() == vector["proof_config_sha256"]
    assert hashlib.sha256(rfc8785.dumps(document)).hexdigest() == vector["document_sha256"]
    data = bytes.fromhex(vector["proof_config_sha256"]) + bytes.fromhex(vector["document_sha256"])
    signature = base58.b58decode(proof["proofValue"][1:])
    seed = bytes.fromhex(VECTORS["device_seed_hex"])
    public = nacl.signing.SigningKey(seed).verify_key
    public.verify(data, signature)  # raises if it does not
    raw_public = base58.b58decode(VECTORS["device_public_key"][1:])
    assert raw_public[:2] == b"\xed\x01" and raw_public[2:] == bytes(public)
    assert signed["issuer"] == "did:key:" + VECTORS["device_public_key"]
    assert proof["verificationMethod"] == signed["issuer"] + "#" + VECTORS["device_public_key"]
    assert len(proof["created"]) == 24 and proof["created"].endswith("Z")
    assert signed["credentialSubject"]["device_id"] == VECTORS["device_id"]


@pytest.mark.parametrize("vector", VECTORS["negative"], ids=lambda v: v["name"])
def test_negative_envelopes_are_refused_with_their_code(vector: dict) -> None:
    with pytest.raises(MarketError) as caught:
        envelope = env.parse_envelope(vector["envelope_json"].encode())
        env.verify_envelope(envelope, audience=VECTORS["audience"], now_ms=vector["now_ms"])
    assert caught.value.code == vector["code"], caught.value.detail


def test_size_is_bounded_before_parsing() -> None:
    good = json.dumps(VECTORS["positive"][0]["envelope"]).encode()
    padded = good[:-1] + b"," + b" " * (VECTORS["envelope_bytes_max"] - len(good)) + b"}"
    with pytest.raises(MarketError) as caught:
        env.parse_envelope(padded)  # one byte too many, whitespace or not: refused unread
    assert caught.value.code == "trace_envelope_invalid"
    big = dict(VECTORS["positive"][2]["envelope"])
    big["padding"] = "x" * VECTORS["envelope_bytes_max"]
    with pytest.raises(MarketError) as caught:
        env.verify_envelope(big, audience=VECTORS["audience"], now_ms=VECTORS["now_ms"])
    assert caught.value.code == "trace_envelope_invalid" and "bytes" in caught.value.detail
