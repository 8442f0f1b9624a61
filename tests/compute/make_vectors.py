"""Regenerate ``tests/vectors/invoke_*.json``: ``python -m tests.compute.make_vectors``.

Ours (no published vectors exist for this protocol): fixed keys, nonces and times give a fixed
invoke token, handshake transcript and derived keys, compute messages, receipts (a call billed,
a call that failed, the final receipt), a countersignature and a rejection, every negative case
with the code a verifier must raise, and worked examples of the admission and cap rules. Ed25519
and JCS are deterministic, so regenerating changes nothing. Every vector is checked by
``tests/compute/test_vectors.py``, by our code and by an independent reading of
docs/protocol.md (hashlib, HMAC, HKDF, PyNaCl and PyJWT called directly).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from domain.model import compute as cm
from domain.model.delivery import jwk_thumbprint
from domain.model.errors import MarketError
from domain.model.invoke import admit_call, capped_amount_minor, issue_invoke_token, verify_invoke_token
from domain.model.invoke_handshake import InvokeClientHandshake, InvokeServerHandshake, derive_keys
from domain.model.invoke_receipts import (
    digest,
    issue_countersignature,
    issue_receipt,
    issue_rejection,
)
from domain.model.jcs import canonical_json, sha256_sri
from domain.model.keys import KxPrivateKey, SigningKey, b64url

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
NOW_S = 1_800_000_000
DEVICE_ID = "5d2c1b0a-9e8f-5a7b-8c6d-1e2f3a4b5c6d"
LISTING_ID = "0b7e6f0e-1d2c-5b3a-9f8e-7d6c5b4a3f2e"


def seed(name: str) -> bytes:
    return hashlib.sha256(b"aimarket invoke vectors/" + name.encode()).digest()


HUB = SigningKey.from_seed(seed("hub"))
DEVICE = SigningKey.from_seed(seed("device"))
DEVICE_KX = KxPrivateKey.from_bytes(seed("device-kx"))
BUYER = SigningKey.from_seed(seed("buyer"))


def claims(**overrides: Any) -> dict[str, Any]:
    out = {"iss": "https://hub.example", "aud": DEVICE_ID, "sub": "invocation-0001", "jti": "vector-invoke-000000001",
           "iat": NOW_S, "start_by": NOW_S + 300, "exp": NOW_S + 3600, "listing_id": LISTING_ID, "listing_version": 2,
           "unit": "tokens", "unit_price_minor": 3, "currency": "USDC", "budget_minor": 90_000,
           "max_call_units": 16384, "max_concurrency": 2, "cnf": {"jkt": jwk_thumbprint(BUYER.verify_key)},
           "seller_keys": {"ed25519": DEVICE.verify_key.to_multibase(), "x25519": DEVICE_KX.public_key.to_multibase()},
           "endpoint": "node.example:9191"}
    out.update(overrides)
    return out


def _raw_token(header: dict[str, Any], payload: dict[str, Any]) -> str:
    text = f"{b64url(canonical_json(header))}.{b64url(canonical_json(payload))}"
    return f"{text}.{b64url(HUB.sign(text.encode()))}"


def token_vector() -> dict[str, Any]:
    good = claims()
    token = issue_invoke_token(good, HUB, HUB.key_id)
    head = {"alg": "EdDSA", "typ": "aimarket-invoke+jwt", "kid": HUB.key_id}
    h, _, s = token.split(".")
    negative = [
        ("expired", token, NOW_S + 3600 + 30, "invoke_token_expired"),
        ("not yet valid", issue_invoke_token(claims(nbf=NOW_S + 600), HUB, HUB.key_id), NOW_S,
         "invoke_token_not_yet_valid"),
        ("start deadline passed", token, NOW_S + 331, "invoke_start_deadline_passed"),
        ("wrong audience", issue_invoke_token(claims(aud="another-device"), HUB, HUB.key_id), NOW_S,
         "invoke_wrong_audience"),
        ("tampered price", f"{h}.{b64url(canonical_json(claims(unit_price_minor=1)))}.{s}", NOW_S,
         "invoke_token_signature_invalid"),
        ("unknown kid", _raw_token({**head, "kid": "ed25519:0000000000000000"}, good), NOW_S, "invoke_unknown_kid"),
        ("delivery typ", _raw_token({**head, "typ": "aimarket-delivery+jwt"}, good), NOW_S, "invoke_wrong_typ"),
        ("unknown claim", _raw_token(head, {**good, "scope": "all"}), NOW_S, "invoke_unknown_claim"),
        ("unknown unit", _raw_token(head, {**good, "unit": "requests"}), NOW_S, "invoke_token_invalid"),
    ]
    return {"hub_seed": seed("hub").hex(), "hub_public_key": HUB.verify_key.to_multibase(), "kid": HUB.key_id,
            "audience": DEVICE_ID, "now_s": NOW_S, "claims": good, "token": token,
            "buyer_jwk_thumbprint": jwk_thumbprint(BUYER.verify_key),
            "negative": [{"name": n, "token": t, "now_s": at, "error": code} for n, t, at, code in negative]}


def handshake_vector(token: str) -> dict[str, Any]:
    hub_keys = {HUB.key_id: HUB.verify_key}
    verified = verify_invoke_token(token, hub_keys, audience=None, now_s=NOW_S)
    buyer_eph, node_eph = KxPrivateKey.from_bytes(seed("buyer-eph")), KxPrivateKey.from_bytes(seed("node-eph"))
    t_buyer, t_node = NOW_S * 1000 + 123, NOW_S * 1000 + 456
    client = InvokeClientHandshake(claims=verified, buyer_key=BUYER, eph=buyer_eph, nonce=seed("buyer-nonce"),
                                   now_ms=t_buyer, last_seq=7)
    server = InvokeServerHandshake(device_keys=[DEVICE], device_id=DEVICE_ID, hub_keys_by_kid=hub_keys, eph=node_eph,
                                   nonce=seed("node-nonce"))
    server.receive_hello(client.hello, t_buyer + 5)
    server_hello = server.server_hello(t_node)
    finish, buyer_side = client.receive_server_hello(server_hello, t_node + 5)
    node_side = server.receive_finish(finish)
    assert node_side.send_key == buyer_side.recv_key and node_side.connection_id == buyer_side.connection_id
    okm = derive_keys(node_eph, buyer_eph.public_key.to_bytes(), node_side.transcript_hash)
    return {
        "token": token, "device_id": DEVICE_ID, "hub_seed": seed("hub").hex(), "device_seed": seed("device").hex(),
        "buyer_seed": seed("buyer").hex(), "buyer_eph_private": seed("buyer-eph").hex(),
        "node_eph_private": seed("node-eph").hex(), "buyer_nonce": seed("buyer-nonce").hex(),
        "node_nonce": seed("node-nonce").hex(), "buyer_ts_ms": t_buyer, "node_ts_ms": t_node, "last_seq": 7,
        "client_hello": client.hello.hex(), "server_hello": server_hello.hex(), "client_finish": finish.hex(),
        "transcript_hash": node_side.transcript_hash.hex(), "connection_id": node_side.connection_id.hex(),
        "key_node_to_buyer": okm[0].hex(), "key_buyer_to_node": okm[1].hex(), "confirm_node": okm[2].hex(),
        "confirm_buyer": okm[3].hex(),
    }


def _subject(token_claims: dict[str, Any], connection: str, **fields: Any) -> dict[str, Any]:
    base = {"invocation_id": token_claims["sub"], "jti": token_claims["jti"], "device_id": DEVICE_ID,
            "listing_id": LISTING_ID, "listing_version": 2, "buyer_jkt": token_claims["cnf"]["jkt"],
            "connection": connection, "unit": "tokens", "unit_price_minor": 3, "currency": "USDC",
            "budget_minor": 90_000, "countersigned_seq": 0, "countersigned_amount_minor": 0, "final": False,
            "end_reason": None}
    return {**base, **fields}


def receipts_vector(hs: dict[str, Any], token_claims: dict[str, Any]) -> dict[str, Any]:
    connection = b64url(bytes.fromhex(hs["connection_id"]))
    at = NOW_S * 1000
    call_input, call_output = b'{"texts":["hello"]}', b'{"tokens":3}'
    billed = issue_receipt(_subject(
        token_claims, connection, seq=8, call=1, units=3, amount_minor=9, cumulative_units=1203,
        cumulative_amount_minor=3609, outcome="ok", error=None, billed=True, input_hash=sha256_sri(call_input),
        output_hash=sha256_sri(call_output), input_bytes=len(call_input), output_bytes=len(call_output),
        started_ms=at + 1000, ended_ms=at + 1042), DEVICE, now_ms=at + 1042, nonce="vector-receipt-nonce-8")
    countersignature = issue_countersignature(billed, BUYER, now_ms=at + 1050, nonce="vector-countersign-8")
    failed = issue_receipt(_subject(
        token_claims, connection, seq=9, call=2, units=0, amount_minor=0, cumulative_units=1203,
        cumulative_amount_minor=3609, outcome="timeout", error="invoke_call_timeout", billed=False,
        input_hash=sha256_sri(call_input), output_hash=None, input_bytes=len(call_input), output_bytes=0,
        started_ms=at + 1100, ended_ms=at + 31100, countersigned_seq=8, countersigned_amount_minor=3609),
        DEVICE, now_ms=at + 31100, nonce="vector-receipt-nonce-9")
    final = issue_receipt(_subject(
        token_claims, connection, seq=10, call=0, units=0, amount_minor=0, cumulative_units=1203,
        cumulative_amount_minor=3609, outcome="final", error=None, billed=False, input_hash=None, output_hash=None,
        input_bytes=0, output_bytes=0, started_ms=at + 32000, ended_ms=at + 32000, countersigned_seq=8,
        countersigned_amount_minor=3609, final=True, end_reason="closed"), DEVICE, now_ms=at + 32000,
        nonce="vector-receipt-nonce-10")
    rejection = issue_rejection({
        "invocation_id": token_claims["sub"], "jti": token_claims["jti"], "device_id": DEVICE_ID,
        "listing_id": LISTING_ID, "buyer_jkt": token_claims["cnf"]["jkt"], "connection": connection, "call": 3,
        "rule": "builtin:deny_patterns", "code": "invoke_input_rejected",
        "detail": "the input matches a deny pattern (prompt-injection marker)", "input_hash": sha256_sri(b"{}"),
        "amount_minor": 0, "at_ms": at + 32500}, DEVICE, now_ms=at + 32500, nonce="vector-rejection-nonce")
    tampered = copy.deepcopy(billed)
    tampered["credentialSubject"]["input_bytes"] += 1
    repriced = dict(billed["credentialSubject"], unit_price_minor=4, amount_minor=12, cumulative_amount_minor=4812)
    over = dict(billed["credentialSubject"], budget_minor=90_000, cumulative_units=30_001,
                cumulative_amount_minor=90_003, seq=20, units=3, amount_minor=9)
    previous = dict(billed["credentialSubject"])
    return {
        "device_public_key": DEVICE.verify_key.to_multibase(), "buyer_public_key": BUYER.verify_key.to_multibase(),
        "previous": dict(previous, seq=7, cumulative_units=1200, cumulative_amount_minor=3600, units=2,
                         amount_minor=6, call=6),
        "billed": billed, "billed_digest": digest(billed), "countersignature": countersignature, "failed": failed,
        "final": final, "rejection": rejection,
        "negative": [
            {"name": "tampered after signing", "receipt": tampered, "error": "invoke_receipt_tampered"},
            {"name": "unit price changed, validly signed",
             "receipt": issue_receipt(repriced, DEVICE, now_ms=at + 1042, nonce="vector-receipt-repriced"),
             "error": "invoke_unit_price_changed"},
            {"name": "replayed: seq 8 again after 8", "receipt": billed, "previous": previous,
             "error": "invoke_receipt_replayed"},
            {"name": "over budget", "receipt": issue_receipt(over, DEVICE, now_ms=at + 1042,
                                                             nonce="vector-receipt-overbudget"),
             "previous": previous, "error": "invoke_over_budget"},
        ],
    }


def messages_vector() -> dict[str, Any]:
    big = bytes(range(256)) * 4200  # 1,075,200 bytes: two records
    return {"header": "kind u8 || call u32be || flags u8 (0x01 = last chunk)",
            "call": cm.pack_message(cm.CALL, 1, b'{"texts":["hello"]}').hex(),
            "cancel": cm.pack_message(cm.CANCEL, 2).hex(),
            "countersign_prefix": cm.pack_message(cm.COUNTERSIGN, 0).hex(),
            "output_chunks": [c[:6].hex() + f"+{len(c) - 6} bytes" for c in cm.chunk_messages(cm.OUTPUT, 1, big)],
            "refusal": cm.pack_message(cm.REFUSAL, 4, canonical_json(
                {"code": "budget_exhausted", "detail": "this call may cost 49152; the session has 3 left",
                 "status": 402, "extra": {"amount_needed_minor": 49152, "remaining_minor": 3,
                                          "shortfall_minor": 49149}})).hex()}


def rules_vector() -> dict[str, Any]:
    admissions = []
    for case in ({"budget_minor": 100, "billed_minor": 70, "in_flight_minor": 10, "countersigned_minor": 70,
                  "call_max_minor": 10, "max_concurrency": 2},
                 {"budget_minor": 100, "billed_minor": 85, "in_flight_minor": 10, "countersigned_minor": 85,
                  "call_max_minor": 10, "max_concurrency": 2},
                 {"budget_minor": 1000, "billed_minor": 50, "in_flight_minor": 10, "countersigned_minor": 30,
                  "call_max_minor": 10, "max_concurrency": 2}):
        try:
            admit_call(**case)
            admissions.append({**case, "result": "admitted"})
        except MarketError as exc:
            admissions.append({**case, "result": exc.code, "extra": exc.extra})
    caps = [{**c, "captured_minor": capped_amount_minor(**c)} for c in (
        {"final_cumulative_minor": 3609, "countersigned_minor": 3609, "call_max_minor": 49152, "max_concurrency": 2,
         "budget_minor": 90_000},
        {"final_cumulative_minor": 500, "countersigned_minor": 100, "call_max_minor": 70, "max_concurrency": 1,
         "budget_minor": 1000},
        {"final_cumulative_minor": 500, "countersigned_minor": 100, "call_max_minor": 70, "max_concurrency": 4,
         "budget_minor": 1000})]
    return {"admission": admissions, "cap": caps}


def build() -> dict[str, dict[str, Any]]:
    token = token_vector()
    hs = handshake_vector(token["token"])
    return {"invoke_token.json": token, "invoke_handshake.json": hs,
            "invoke_receipts.json": receipts_vector(hs, token["claims"]), "invoke_messages.json": messages_vector(),
            "invoke_rules.json": rules_vector()}


def main() -> None:
    for name, content in build().items():
        (VECTORS / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        print(f"wrote {VECTORS / name}")


if __name__ == "__main__":
    main()
