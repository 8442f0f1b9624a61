"""Regenerate ``tests/vectors/delivery_*.json``: ``python -m tests.delivery.make_vectors``.

Ours (no published vectors exist for this protocol): fixed keys, nonces and times give fixed
tokens, transcripts, derived keys, signatures, receipts and confirmations (Ed25519 and JCS
are deterministic). Frames are the exception: libsodium draws each secretstream header at
random, so the frame file holds one recorded stream (key, header, frames) that a receiver must
open, and its negative variants; regenerating it changes its bytes, not its meaning.
Every vector is checked by ``tests/delivery/test_vectors.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from domain.model import frames as fr
from domain.model import receipts
from domain.model.blocks import BlockCommitment, hash_blocks
from domain.model.delivery import issue_delivery_token, jwk_thumbprint, verify_delivery_token
from domain.model.handshake import ClientHandshake, ServerHandshake, derive_keys
from domain.model.jcs import canonical_json
from domain.model.keys import KxPrivateKey, SigningKey, b64url
from domain.model.receipts import issue_confirmation, issue_receipt

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
NOW_S = 1_800_000_000
DEVICE_ID = "3f1c2b9e-6d7a-5e4f-8a9b-0c1d2e3f4a5b"
LISTING_ID = "0b7e6f0e-1d2c-5b3a-9f8e-7d6c5b4a3f2e"
BLOCK = 4096


def seed(name: str) -> bytes:
    return hashlib.sha256(b"aimarket delivery vectors/" + name.encode()).digest()


HUB = SigningKey.from_seed(seed("hub"))
DEVICE = SigningKey.from_seed(seed("device"))
DEVICE_KX = KxPrivateKey.from_bytes(seed("device-kx"))
BUYER = SigningKey.from_seed(seed("buyer"))
OBJECT = b"".join(hashlib.sha256(b"object/%d" % i).digest() for i in range(300))  # 9,600 bytes: 3 blocks


def blocks_vector() -> dict[str, Any]:
    chunks = [OBJECT[i : i + BLOCK] for i in range(0, len(OBJECT), BLOCK)]
    hashes = hash_blocks(chunks)
    return {"object_hex": OBJECT.hex(), "block_size": BLOCK, "block_hashes": [h.hex() for h in hashes],
            "commitment": BlockCommitment.build(len(OBJECT), BLOCK, hashes).to_json()}


def claims(blocks: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    out = {"iss": "https://hub.example", "aud": DEVICE_ID, "sub": "purchase-0001", "jti": "vector-token-000000001",
           "iat": NOW_S, "start_by": NOW_S + 300, "exp": NOW_S + 3600, "listing_id": LISTING_ID, "listing_version": 2,
           "content_hash": "sha256-" + base64.b64encode(hashlib.sha256(OBJECT).digest()).decode(),
           "size_bytes": len(OBJECT), "byte_limit": 2 * len(OBJECT), "blocks": blocks["commitment"],
           "cnf": {"jkt": jwk_thumbprint(BUYER.verify_key)},
           "seller_keys": {"ed25519": DEVICE.verify_key.to_multibase(), "x25519": DEVICE_KX.public_key.to_multibase()},
           "endpoint": "node.example:9090"}
    out.update(overrides)
    return out


def _raw_token(header: dict[str, Any], payload: dict[str, Any]) -> str:
    text = f"{b64url(canonical_json(header))}.{b64url(canonical_json(payload))}"
    return f"{text}.{b64url(HUB.sign(text.encode()))}"


def token_vector(blocks: dict[str, Any]) -> dict[str, Any]:
    good = claims(blocks)
    token = issue_delivery_token(good, HUB, HUB.key_id)
    head = {"alg": "EdDSA", "typ": "aimarket-delivery+jwt", "kid": HUB.key_id}
    h, p, s = token.split(".")
    negative = [
        ("expired", token, NOW_S + 3600 + 31, "delivery_token_expired"),
        ("not yet valid", issue_delivery_token(claims(blocks, nbf=NOW_S + 600), HUB, HUB.key_id), NOW_S,
         "delivery_token_not_yet_valid"),
        ("start deadline passed", token, NOW_S + 331, "delivery_start_deadline_passed"),
        ("wrong audience", issue_delivery_token(claims(blocks, aud="another-device"), HUB, HUB.key_id), NOW_S,
         "delivery_wrong_audience"),
        ("tampered claims", f"{h}.{b64url(canonical_json(claims(blocks, byte_limit=3 * len(OBJECT))))}.{s}", NOW_S,
         "delivery_token_signature_invalid"),
        ("tampered cnf", f"{h}.{b64url(canonical_json(claims(blocks, cnf={'jkt': 'A' * 43})))}.{s}", NOW_S,
         "delivery_token_signature_invalid"),
        ("unknown kid", _raw_token({**head, "kid": "ed25519:0000000000000000"}, good), NOW_S, "delivery_unknown_kid"),
        ("wrong typ", _raw_token({**head, "typ": "JWT"}, good), NOW_S, "delivery_wrong_typ"),
        ("unknown header field", _raw_token({**head, "jku": "https://evil.example"}, good), NOW_S,
         "delivery_unknown_claim"),
        ("unknown claim", _raw_token(head, {**good, "scope": "all"}), NOW_S, "delivery_unknown_claim"),
        ("nested too deeply", _raw_token(head, {**good, "endpoint": [[[[["x"]]]]]}), NOW_S, "delivery_token_invalid"),
        ("two segments", f"{h}.{p}", NOW_S, "delivery_token_invalid"),
    ]
    return {"hub_seed": seed("hub").hex(), "hub_public_key": HUB.verify_key.to_multibase(), "kid": HUB.key_id,
            "audience": DEVICE_ID, "now_s": NOW_S, "claims": good, "token": token,
            "buyer_jwk_thumbprint": jwk_thumbprint(BUYER.verify_key),
            "negative": [{"name": n, "token": t, "now_s": at, "error": code} for n, t, at, code in negative]}


def handshake_vector(token: str) -> dict[str, Any]:
    hub_keys = {HUB.key_id: HUB.verify_key}
    verified = verify_delivery_token(token, hub_keys, audience=None, now_s=NOW_S)
    buyer_eph, node_eph = KxPrivateKey.from_bytes(seed("buyer-eph")), KxPrivateKey.from_bytes(seed("node-eph"))
    t_buyer, t_node = NOW_S * 1000 + 123, NOW_S * 1000 + 456
    client = ClientHandshake(claims=verified, buyer_key=BUYER, eph=buyer_eph, nonce=seed("buyer-nonce"),
                             now_ms=t_buyer, resume_block=1)
    server = ServerHandshake(device_keys=[DEVICE], device_id=DEVICE_ID, hub_keys_by_kid=hub_keys, eph=node_eph,
                             nonce=seed("node-nonce"))
    server.receive_hello(client.hello, t_buyer + 5)
    server_hello = server.server_hello(t_node)
    finish, buyer_side = client.receive_server_hello(server_hello, t_node + 5)
    node_side = server.receive_finish(finish)
    assert node_side.send_key == buyer_side.recv_key and node_side.session_id == buyer_side.session_id
    okm = derive_keys(node_eph, buyer_eph.public_key.to_bytes(), node_side.transcript_hash)
    return {
        "token": token, "device_id": DEVICE_ID, "hub_seed": seed("hub").hex(), "device_seed": seed("device").hex(),
        "buyer_seed": seed("buyer").hex(), "buyer_eph_private": seed("buyer-eph").hex(),
        "node_eph_private": seed("node-eph").hex(), "buyer_nonce": seed("buyer-nonce").hex(),
        "node_nonce": seed("node-nonce").hex(), "buyer_ts_ms": t_buyer, "node_ts_ms": t_node, "resume_block": 1,
        "client_hello": client.hello.hex(), "server_hello": server_hello.hex(), "client_finish": finish.hex(),
        "transcript_hash": node_side.transcript_hash.hex(), "session_id": node_side.session_id.hex(),
        "key_node_to_buyer": okm[0].hex(), "key_buyer_to_node": okm[1].hex(), "confirm_node": okm[2].hex(),
        "confirm_buyer": okm[3].hex(),
    }


def frames_vector(key: bytes) -> dict[str, Any]:
    sealer = fr.FrameSealer(key)
    records = [(fr.HASHES, b"\x00\x00\x00\x00" + bytes(32)), (fr.DATA, b"first record"), (fr.ACK, b"\x00\x00\x00\x01"),
               (fr.DATA, b"second record"), (fr.END, canonical_json({"done": True}))]
    frames = [sealer.seal(t, p).hex() for t, p in records]
    return {"key": key.hex(), "stream_header": sealer.header.hex(),
            "frames": [{"frame": f, "type": t, "plaintext": p.hex()} for f, (t, p) in zip(frames, records, strict=True)],
            "negative": {"tampered_byte": "flip the last byte of frame 1: frame_invalid",
                         "tampered_header": "announce frame 1 as ack: frame_invalid",
                         "reordered": "open frame 2 before frame 1: frame_invalid",
                         "replayed": "open frame 1 twice: frame_invalid",
                         "truncated": "stop before frame 4 (end) and close: stream_truncated"}}


def receipts_vector(hs: dict[str, Any], token_claims: dict[str, Any]) -> dict[str, Any]:
    session = b64url(bytes.fromhex(hs["session_id"]))
    common = {"purchase_id": token_claims["sub"], "jti": token_claims["jti"], "device_id": DEVICE_ID,
              "content_hash": token_claims["content_hash"], "size_bytes": len(OBJECT),
              "blocks_root": token_claims["blocks"]["root"], "session": session}
    confirmation = issue_confirmation({**common, "blocks_verified": 3, "received_at_ms": NOW_S * 1000 + 900},
                                      BUYER, now_ms=NOW_S * 1000 + 900, nonce="vector-confirmation-nonce")
    subject = {**common, "listing_id": LISTING_ID, "listing_version": 2,
               "buyer_jkt": token_claims["cnf"]["jkt"], "seq": 2, "sessions": 2, "bytes_sent": len(OBJECT) + BLOCK,
               "intervals": [[0, len(OBJECT)]], "first_byte_ms": NOW_S * 1000 + 500,
               "last_byte_ms": NOW_S * 1000 + 800, "blocks_acked": 3, "outcome": "complete",
               "confirmation": receipts.digest(confirmation)}
    receipt = issue_receipt(subject, DEVICE, now_ms=NOW_S * 1000 + 950, nonce="vector-receipt-nonce")
    return {"device_public_key": DEVICE.verify_key.to_multibase(), "buyer_jkt": token_claims["cnf"]["jkt"],
            "receipt": receipt, "receipt_digest": receipts.digest(receipt), "confirmation": confirmation,
            "negative": {"altered_subject": "bytes_sent + 1: receipt_invalid",
                         "other_device_key": "verify under another key: receipt_invalid",
                         "confirmation_other_jkt": "verify_confirmation with another jkt: receipt_invalid",
                         "extra_field": "an unknown subject field: receipt_invalid"}}


def build() -> dict[str, dict[str, Any]]:
    blocks = blocks_vector()
    token = token_vector(blocks)
    hs = handshake_vector(token["token"])
    return {"delivery_blocks.json": blocks, "delivery_token.json": token, "delivery_handshake.json": hs,
            "delivery_frames.json": frames_vector(bytes.fromhex(hs["key_node_to_buyer"])),
            "delivery_receipts.json": receipts_vector(hs, token["claims"])}


def main() -> None:
    for name, content in build().items():
        (VECTORS / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        print(f"wrote {VECTORS / name}")


if __name__ == "__main__":
    main()
