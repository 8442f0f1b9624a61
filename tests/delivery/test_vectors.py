"""The delivery golden vectors (``tests/vectors/delivery_*.json``), checked two ways: our code
reproduces them, and an independent reading of docs/protocol.md (hashlib, HMAC, HKDF, PyJWT,
PyNaCl called directly) agrees with them."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import struct
from pathlib import Path

import jwt
import nacl.bindings
import nacl.signing
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from domain.model import frames as fr
from domain.model.blocks import BlockCommitment, blocks_root
from domain.model.delivery import jwk_thumbprint, verify_delivery_token
from domain.model.errors import FrameInvalid, MarketError, ReceiptInvalid, StreamTruncated
from domain.model.handshake import ClientHandshake, ServerHandshake
from domain.model.keys import KxPrivateKey, SigningKey, VerifyKey, b64url
from domain.model.receipts import digest, verify_confirmation, verify_receipt
from tests.delivery import make_vectors

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_the_deterministic_vectors_are_what_the_generator_makes() -> None:
    built = make_vectors.build()
    for name in ("delivery_blocks.json", "delivery_token.json", "delivery_handshake.json", "delivery_receipts.json"):
        assert json.loads(json.dumps(built[name])) == load(name), name


def test_block_root_by_the_spec() -> None:
    v = load("delivery_blocks.json")
    data, size = bytes.fromhex(v["object_hex"]), v["block_size"]
    digests = [hashlib.sha256(data[i : i + size]).digest() for i in range(0, len(data), size)]
    assert [d.hex() for d in digests] == v["block_hashes"]
    label = b"aimarket/delivery/blocks/v1"
    root = hashlib.sha256(lp(label) + struct.pack(">QII", len(data), size, len(digests)) + b"".join(digests)).digest()
    assert b64url(root) == v["commitment"]["root"] == b64url(blocks_root(len(data), size, digests))
    BlockCommitment.from_json(v["commitment"]).check_hashes(len(data), digests)


def test_the_token_verifies_here_and_with_pyjwt() -> None:
    v = load("delivery_token.json")
    hub = VerifyKey.from_multibase(v["hub_public_key"])
    claims = verify_delivery_token(v["token"], {v["kid"]: hub}, audience=v["audience"], now_s=v["now_s"])
    assert claims.raw == v["claims"]
    decoded = jwt.decode(v["token"], Ed25519PublicKey.from_public_bytes(hub.to_bytes()), algorithms=["EdDSA"],
                         audience=v["audience"], options={"verify_exp": False, "verify_iat": False})
    assert decoded == v["claims"]
    assert jwt.get_unverified_header(v["token"]) == {"alg": "EdDSA", "typ": "aimarket-delivery+jwt", "kid": v["kid"]}
    x = base64.urlsafe_b64encode(make_vectors.BUYER.verify_key.to_bytes()).rstrip(b"=").decode()
    thumb = hashlib.sha256(json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":")).encode())
    assert v["claims"]["cnf"]["jkt"] == b64url(thumb.digest()) == jwk_thumbprint(make_vectors.BUYER.verify_key)


@pytest.mark.parametrize("case", load("delivery_token.json")["negative"], ids=lambda c: c["name"])
def test_each_bad_token_has_its_error(case: dict) -> None:
    v = load("delivery_token.json")
    with pytest.raises(MarketError) as caught:
        verify_delivery_token(case["token"], {v["kid"]: VerifyKey.from_multibase(v["hub_public_key"])},
                              audience=v["audience"], now_s=case["now_s"])
    assert caught.value.code == case["error"]


def test_the_handshake_transcript_by_the_spec() -> None:
    v = load("delivery_handshake.json")
    h = {k: bytes.fromhex(v[k]) for k in ("client_hello", "server_hello", "client_finish")}
    device = nacl.signing.SigningKey(bytes.fromhex(v["device_seed"]))
    buyer = nacl.signing.SigningKey(bytes.fromhex(v["buyer_seed"]))
    buyer_eph = nacl.bindings.crypto_scalarmult_base(bytes.fromhex(v["buyer_eph_private"]))
    node_eph = nacl.bindings.crypto_scalarmult_base(bytes.fromhex(v["node_eph_private"]))
    ts_b, ts_n = struct.pack(">Q", v["buyer_ts_ms"]), struct.pack(">Q", v["node_ts_ms"])
    nonce_b, nonce_n, token = bytes.fromhex(v["buyer_nonce"]), bytes.fromhex(v["node_nonce"]), v["token"].encode()
    assert h["client_hello"] == b"".join(lp(x) for x in (b"\x00\x01", token, buyer_eph, bytes(buyer.verify_key), ts_b,
                                                          nonce_b))
    label = b"aimarket-delivery/1"
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
    resume = struct.pack(">I", v["resume_block"])
    th2 = hashlib.sha256(b"".join(lp(x) for x in (label + b" client finish", th, node_sig, node_mac, resume))).digest()
    assert th2.hex() == v["session_id"]
    buyer_sig = buyer.sign(lp(label + b" client signature") + th2).signature
    buyer_mac = hmac.new(okm[96:128], lp(label + b" client confirm") + th2, hashlib.sha256).digest()
    assert h["client_finish"] == b"".join(lp(x) for x in (resume, buyer_sig, buyer_mac))


def _server(v: dict) -> ServerHandshake:
    hub = SigningKey.from_seed(bytes.fromhex(v["hub_seed"]))
    return ServerHandshake(device_keys=[SigningKey.from_seed(bytes.fromhex(v["device_seed"]))],
                           device_id=v["device_id"], hub_keys_by_kid={hub.key_id: hub.verify_key},
                           eph=KxPrivateKey.from_bytes(bytes.fromhex(v["node_eph_private"])),
                           nonce=bytes.fromhex(v["node_nonce"]))


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


@pytest.mark.parametrize(("name", "step", "code"), [
    ("client hello tampered token", "hello", "delivery_token_signature_invalid"),
    ("buyer clock 31 s behind", "skew", "delivery_clock_skew"),
    ("finish with a bad buyer signature", "finish_sig", "delivery_possession_failed"),
    ("finish with a bad key confirmation", "finish_mac", "delivery_possession_failed"),
    ("finish with another resume block", "finish_resume", "delivery_possession_failed"),
    ("trailing byte", "trailing", "delivery_handshake_failed"),
])
def test_the_node_refuses_a_bad_handshake(name: str, step: str, code: str) -> None:
    v = load("delivery_handshake.json")
    hello, finish = bytes.fromhex(v["client_hello"]), bytes.fromhex(v["client_finish"])
    server, now = _server(v), v["buyer_ts_ms"] + 5
    with pytest.raises(MarketError) as caught:
        if step == "hello":
            server.receive_hello(_flip(hello, 10 + v["token"].index(".") + 20), now)  # inside the claims
        elif step == "skew":
            server.receive_hello(hello, v["buyer_ts_ms"] + 31_000)
        elif step == "trailing":
            server.receive_hello(hello + b"\x00", now)
        else:
            server.receive_hello(hello, now)
            server.server_hello(v["node_ts_ms"])
            at = {"finish_sig": 4 + 4 + 4 + 10, "finish_mac": len(finish) - 1, "finish_resume": 7}[step]
            server.receive_finish(_flip(finish, at))
    assert caught.value.code == code, name


@pytest.mark.parametrize(("step", "code"), [
    ("server_sig", "delivery_possession_failed"), ("server_mac", "delivery_possession_failed"),
    ("skew", "delivery_clock_skew"), ("short", "delivery_handshake_failed")])
def test_the_buyer_refuses_a_bad_server_hello(step: str, code: str) -> None:
    v = load("delivery_handshake.json")
    hub = SigningKey.from_seed(bytes.fromhex(v["hub_seed"]))
    claims = verify_delivery_token(v["token"], {hub.key_id: hub.verify_key}, audience=None, now_s=v["buyer_ts_ms"] // 1000)
    client = ClientHandshake(claims=claims, buyer_key=SigningKey.from_seed(bytes.fromhex(v["buyer_seed"])),
                             eph=KxPrivateKey.from_bytes(bytes.fromhex(v["buyer_eph_private"])),
                             nonce=bytes.fromhex(v["buyer_nonce"]), now_ms=v["buyer_ts_ms"], resume_block=1)
    assert client.hello.hex() == v["client_hello"]
    hello = bytes.fromhex(v["server_hello"])
    now = v["node_ts_ms"]
    payload = {"server_sig": _flip(hello, 4 * 4 + 32 + 8 + 32 + 3), "server_mac": _flip(hello, len(hello) - 1),
               "skew": hello, "short": hello[:-1]}[step]
    with pytest.raises(MarketError) as caught:
        client.receive_server_hello(payload, now + 31_000 if step == "skew" else now)
    assert caught.value.code == code


def _opener() -> tuple[fr.FrameOpener, list[tuple[int, bytes]]]:
    v = load("delivery_frames.json")
    frames = [bytes.fromhex(f["frame"]) for f in v["frames"]]
    parsed = [(fr.parse_header(f[:5])[0], f[5:]) for f in frames]
    return fr.FrameOpener(bytes.fromhex(v["key"]), bytes.fromhex(v["stream_header"])), parsed


def test_the_recorded_stream_opens() -> None:
    v = load("delivery_frames.json")
    opener, parsed = _opener()
    for (frame_type, body), expected in zip(parsed, v["frames"], strict=True):
        record = opener.open(frame_type, body)
        assert (record.type, record.payload.hex()) == (expected["type"], expected["plaintext"])
    opener.close()


@pytest.mark.parametrize("case", ["tampered_byte", "tampered_header", "reordered", "replayed", "truncated",
                                  "after_end"])
def test_a_bad_stream_is_caught(case: str) -> None:
    opener, parsed = _opener()
    opener.open(*parsed[0])
    with pytest.raises(FrameInvalid) as caught:
        if case == "tampered_byte":
            opener.open(parsed[1][0], _flip(parsed[1][1], len(parsed[1][1]) - 1))
        elif case == "tampered_header":
            opener.open(fr.ACK, parsed[1][1])
        elif case == "reordered":
            opener.open(*parsed[2])
        elif case == "replayed":
            opener.open(*parsed[1])
            opener.open(*parsed[1])
        elif case == "truncated":
            for frame in parsed[1:4]:
                opener.open(*frame)
            opener.close()
        else:
            for frame in parsed[1:]:
                opener.open(*frame)
            opener.open(*parsed[1])
    if case == "truncated":
        assert isinstance(caught.value, StreamTruncated)


def test_receipt_and_confirmation_verify() -> None:
    v = load("delivery_receipts.json")
    device = VerifyKey.from_multibase(v["device_public_key"])
    subject = verify_receipt(v["receipt"], device_key=device)
    assert subject["confirmation"] == digest(v["confirmation"]) and digest(v["receipt"]) == v["receipt_digest"]
    assert verify_confirmation(v["confirmation"], cnf_jkt=v["buyer_jkt"])["blocks_verified"] == 3


@pytest.mark.parametrize("case", ["altered_subject", "other_device_key", "confirmation_other_jkt", "extra_field"])
def test_a_bad_receipt_is_refused(case: str) -> None:
    v = load("delivery_receipts.json")
    device = VerifyKey.from_multibase(v["device_public_key"])
    receipt = copy.deepcopy(v["receipt"])
    with pytest.raises(ReceiptInvalid):
        if case == "altered_subject":
            receipt["credentialSubject"]["bytes_sent"] += 1
            verify_receipt(receipt, device_key=device)
        elif case == "other_device_key":
            verify_receipt(receipt, device_key=SigningKey.generate().verify_key)
        elif case == "confirmation_other_jkt":
            verify_confirmation(v["confirmation"], cnf_jkt=jwk_thumbprint(SigningKey.generate().verify_key))
        else:
            receipt["credentialSubject"]["note"] = "x"
            verify_receipt(receipt, device_key=device)
