"""The compute golden vectors (``tests/vectors/invoke_*.json``), checked two ways: our code
reproduces and accepts them, and an independent reading of docs/protocol.md ("Compute": hashlib,
HMAC, HKDF, rfc8785, PyNaCl and PyJWT called directly) agrees with them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from pathlib import Path

import base58
import jwt
import nacl.bindings
import nacl.signing
import pytest
import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from domain.model import compute as cm
from domain.model.errors import MarketError
from domain.model.invoke import admit_call, capped_amount_minor, verify_invoke_token
from domain.model.invoke_handshake import InvokeServerHandshake
from domain.model.invoke_receipts import digest, verify_countersignature, verify_receipt, verify_rejection
from domain.model.keys import KxPrivateKey, SigningKey, VerifyKey
from domain.model.vc import verify_credential
from tests.compute import make_vectors

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _claims():
    v = load("invoke_token.json")
    hub = VerifyKey.from_multibase(v["hub_public_key"])
    return verify_invoke_token(v["token"], {v["kid"]: hub}, audience=v["audience"], now_s=v["now_s"])


def test_the_vectors_are_what_the_generator_makes() -> None:
    for name, content in make_vectors.build().items():
        assert json.loads(json.dumps(content)) == load(name), name


def test_the_token_verifies_here_and_with_pyjwt() -> None:
    v = load("invoke_token.json")
    assert _claims().raw == v["claims"]
    hub = VerifyKey.from_multibase(v["hub_public_key"])
    decoded = jwt.decode(v["token"], Ed25519PublicKey.from_public_bytes(hub.to_bytes()), algorithms=["EdDSA"],
                         audience=v["audience"], options={"verify_exp": False, "verify_iat": False})
    assert decoded == v["claims"]
    assert jwt.get_unverified_header(v["token"]) == {"alg": "EdDSA", "typ": "aimarket-invoke+jwt", "kid": v["kid"]}


@pytest.mark.parametrize("case", load("invoke_token.json")["negative"], ids=lambda c: c["name"])
def test_each_bad_token_has_its_code(case: dict) -> None:
    v = load("invoke_token.json")
    with pytest.raises(MarketError) as caught:
        verify_invoke_token(case["token"], {v["kid"]: VerifyKey.from_multibase(v["hub_public_key"])},
                            audience=v["audience"], now_s=case["now_s"])
    assert caught.value.code == case["error"]


def test_the_handshake_by_the_spec() -> None:
    v = load("invoke_handshake.json")
    h = {k: bytes.fromhex(v[k]) for k in ("client_hello", "server_hello", "client_finish")}
    device = nacl.signing.SigningKey(bytes.fromhex(v["device_seed"]))
    buyer = nacl.signing.SigningKey(bytes.fromhex(v["buyer_seed"]))
    buyer_eph = nacl.bindings.crypto_scalarmult_base(bytes.fromhex(v["buyer_eph_private"]))
    node_eph = nacl.bindings.crypto_scalarmult_base(bytes.fromhex(v["node_eph_private"]))
    ts_b, ts_n = struct.pack(">Q", v["buyer_ts_ms"]), struct.pack(">Q", v["node_ts_ms"])
    nonce_b, nonce_n, token = bytes.fromhex(v["buyer_nonce"]), bytes.fromhex(v["node_nonce"]), v["token"].encode()
    assert h["client_hello"] == b"".join(lp(x) for x in (b"\x00\x01", token, buyer_eph, bytes(buyer.verify_key), ts_b,
                                                          nonce_b))
    label = b"aimarket-invoke/1"
    th = hashlib.sha256(b"".join(lp(x) for x in (label + b" transcript", b"\x00\x01", bytes(device.verify_key),
                                                  bytes(buyer.verify_key), token, buyer_eph, ts_b, nonce_b, node_eph,
                                                  ts_n, nonce_n))).digest()
    assert th.hex() == v["transcript_hash"]
    shared = nacl.bindings.crypto_scalarmult(bytes.fromhex(v["node_eph_private"]), buyer_eph)
    okm = HKDF(algorithm=hashes.SHA256(), length=128, salt=th, info=label + b" keys").derive(shared)
    assert [okm[i : i + 32].hex() for i in (0, 32, 64, 96)] == [
        v["key_node_to_buyer"], v["key_buyer_to_node"], v["confirm_node"], v["confirm_buyer"]]
    node_sig = device.sign(lp(label + b" server signature") + th).signature
    node_mac = hmac.new(okm[64:96], lp(label + b" server confirm") + th, hashlib.sha256).digest()
    assert h["server_hello"] == b"".join(lp(x) for x in (node_eph, ts_n, nonce_n, node_sig, node_mac))
    last = struct.pack(">I", v["last_seq"])
    th2 = hashlib.sha256(b"".join(lp(x) for x in (label + b" client finish", th, node_sig, node_mac, last))).digest()
    assert th2.hex() == v["connection_id"]
    buyer_sig = buyer.sign(lp(label + b" client signature") + th2).signature
    buyer_mac = hmac.new(okm[96:128], lp(label + b" client confirm") + th2, hashlib.sha256).digest()
    assert h["client_finish"] == b"".join(lp(x) for x in (last, buyer_sig, buyer_mac))


@pytest.mark.parametrize(("step", "code"), [("finish_mac", "invoke_possession_failed"),
                                            ("finish_last_seq", "invoke_possession_failed"),
                                            ("skew", "invoke_clock_skew"), ("trailing", "invoke_handshake_failed")])
def test_the_node_refuses_a_bad_handshake(step: str, code: str) -> None:
    v = load("invoke_handshake.json")
    hub = SigningKey.from_seed(bytes.fromhex(v["hub_seed"]))
    server = InvokeServerHandshake(device_keys=[SigningKey.from_seed(bytes.fromhex(v["device_seed"]))],
                                   device_id=v["device_id"], hub_keys_by_kid={hub.key_id: hub.verify_key},
                                   eph=KxPrivateKey.from_bytes(bytes.fromhex(v["node_eph_private"])),
                                   nonce=bytes.fromhex(v["node_nonce"]))
    hello, finish = bytes.fromhex(v["client_hello"]), bytes.fromhex(v["client_finish"])
    with pytest.raises(MarketError) as caught:
        if step == "skew":
            server.receive_hello(hello, v["buyer_ts_ms"] + 31_000)
        elif step == "trailing":
            server.receive_hello(hello + b"\x00", v["buyer_ts_ms"])
        else:
            server.receive_hello(hello, v["buyer_ts_ms"])
            server.server_hello(v["node_ts_ms"])
            at = len(finish) - 1 if step == "finish_mac" else 7
            server.receive_finish(finish[:at] + bytes([finish[at] ^ 1]) + finish[at + 1 :])
    assert caught.value.code == code


def _proof_by_hand(vc: dict, public_key: str) -> None:
    """eddsa-jcs-2022 read from the W3C spec: SHA-256(JCS(proof options + @context)) ||
    SHA-256(JCS(document without proof)), Ed25519 over the 64 bytes, base58btc with a ``z``."""
    proof = dict(vc["proof"])
    signature = base58.b58decode(proof.pop("proofValue")[1:])
    document = {k: value for k, value in vc.items() if k != "proof"}
    data = hashlib.sha256(rfc8785.dumps(proof)).digest() + hashlib.sha256(rfc8785.dumps(document)).digest()
    nacl.signing.VerifyKey(VerifyKey.from_multibase(public_key).to_bytes()).verify(data, signature)


def test_the_receipts_verify_here_by_hand_and_as_a_chain() -> None:
    v, claims = load("invoke_receipts.json"), _claims()
    for name in ("billed", "failed", "final", "rejection"):
        _proof_by_hand(v[name], v["device_public_key"])
        verify_credential(v[name])
    _proof_by_hand(v["countersignature"], v["buyer_public_key"])
    billed = verify_receipt(v["billed"], claims, previous=v["previous"])
    failed = verify_receipt(v["failed"], claims, previous=billed)
    final = verify_receipt(v["final"], claims, previous=failed)
    assert (billed["amount_minor"], failed["amount_minor"], final["cumulative_amount_minor"]) == (9, 0, 3609)
    by_hand = "sha256-" + base64.b64encode(hashlib.sha256(rfc8785.dumps(v["billed"])).digest()).decode()
    assert digest(v["billed"]) == v["billed_digest"] == by_hand
    countersigned = verify_countersignature(v["countersignature"], claims)
    assert countersigned["receipt"] == v["billed_digest"] and countersigned["cumulative_amount_minor"] == 3609
    assert verify_rejection(v["rejection"], claims)["amount_minor"] == 0


@pytest.mark.parametrize("case", load("invoke_receipts.json")["negative"], ids=lambda c: c["name"])
def test_each_bad_receipt_has_its_code(case: dict) -> None:
    with pytest.raises(MarketError) as caught:
        verify_receipt(case["receipt"], _claims(), previous=case.get("previous"))
    assert caught.value.code == case["error"]


def test_the_messages_decode() -> None:
    v = load("invoke_messages.json")
    call = cm.unpack_message(bytes.fromhex(v["call"]), allowed=cm.FROM_BUYER)
    assert (call.name, call.call, call.last, call.body) == ("call", 1, True, b'{"texts":["hello"]}')
    assert cm.unpack_message(bytes.fromhex(v["cancel"]), allowed=cm.FROM_BUYER).call == 2
    refusal = cm.unpack_message(bytes.fromhex(v["refusal"]), allowed=cm.FROM_NODE)
    assert json.loads(refusal.body)["extra"]["amount_needed_minor"] == 49152
    assert [c.split("+")[0][-2:] for c in v["output_chunks"]] == ["00", "01"]


def test_the_rules_give_the_recorded_answers() -> None:
    v = load("invoke_rules.json")
    for case in v["admission"]:
        inputs = {k: value for k, value in case.items() if k not in ("result", "extra")}
        try:
            admit_call(**inputs)
            assert case["result"] == "admitted"
        except MarketError as exc:
            assert (exc.code, exc.extra) == (case["result"], case["extra"])
    for case in v["cap"]:
        assert capped_amount_minor(**{k: value for k, value in case.items() if k != "captured_minor"}) == case[
            "captured_minor"]
