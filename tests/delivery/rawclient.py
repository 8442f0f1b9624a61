"""A buyer that skips its own checks, to see what the node refuses and with which code."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import struct
import time

from domain.model import frames as fr
from domain.model.blocks import BlockCommitment
from domain.model.delivery import DeliveryClaims, jwk_thumbprint
from domain.model.handshake import ClientHandshake, lp
from domain.model.keys import KxPrivateKey, KxPublicKey, SigningKey, VerifyKey, b64url_decode
from node.delivery.wire import DeliveryRefused, expect_plain, read_record, send


def unverified_claims(token: str) -> DeliveryClaims:
    header, payload, _ = token.split(".")
    raw = json.loads(b64url_decode(payload))
    kid = json.loads(b64url_decode(header))["kid"]
    return DeliveryClaims(raw, token, kid, BlockCommitment.from_json(raw["blocks"]),
                          VerifyKey.from_multibase(raw["seller_keys"]["ed25519"]),
                          KxPublicKey.from_multibase(raw["seller_keys"]["x25519"]))


async def attempt(port: int, token: str, key: SigningKey, *, present: VerifyKey | None = None) -> str:
    """Run the handshake as far as the node lets us; return ``accepted`` or the node's code.

    ``present``: announce this public key instead of ``key``'s (a thief holding the token and
    the victim's public key, but not its private key).
    """
    claims = unverified_claims(token)
    shown = present or key.verify_key
    claims = dataclasses.replace(claims, raw={**claims.raw, "cnf": {"jkt": jwk_thumbprint(key.verify_key)}})
    hs = ClientHandshake(claims=claims, buyer_key=key, eph=KxPrivateKey.generate(), nonce=secrets.token_bytes(32),
                         now_ms=time.time_ns() // 1_000_000)
    if shown != key.verify_key:
        hs._fields["buyer_key"] = shown.to_bytes()
        f = hs._fields
        hs.hello = b"".join(lp(x) for x in (struct.pack(">H", 1), f["token"], f["buyer_eph"], f["buyer_key"],
                                            f["buyer_ts"], f["buyer_nonce"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await send(writer, fr.plain_frame(fr.CLIENT_HELLO, hs.hello), 10)
        server_hello = await expect_plain(reader, fr.SERVER_HELLO, 10)
        finish, session = hs.receive_server_hello(server_hello, time.time_ns() // 1_000_000)
        await send(writer, fr.plain_frame(fr.CLIENT_FINISH, finish), 10)
        sealer = fr.FrameSealer(session.send_key)
        await send(writer, sealer.start_frame(), 10)
        opener = fr.FrameOpener(session.recv_key, await expect_plain(reader, fr.STREAM_START, 10))
        record = await read_record(reader, opener, 10)
        return "accepted" if record.type == fr.HASHES else record.name
    except DeliveryRefused as exc:
        return exc.code
    finally:
        writer.close()
