"""The delivery handshake ``aimarket-delivery/1``: pure state machines, no sockets, no clock.

Three messages (carried in plaintext handshake frames, ``domain.model.frames``); every field
is length-prefixed, ``lp(x) = u32be(len(x)) || x``, and a message is the concatenation of
exactly its fields, in order, with nothing after them:

* ClientHello (buyer → node): ``version`` (u16be = 1), ``token`` (ASCII compact JWS),
  ``buyer_eph`` (X25519, 32), ``buyer_key`` (the per-purchase Ed25519 key, 32),
  ``buyer_ts`` (u64be milliseconds), ``buyer_nonce`` (32 random bytes).
* ServerHello (node → buyer): ``node_eph`` (32), ``node_ts`` (u64be ms), ``node_nonce`` (32),
  ``node_sig`` (64), ``node_mac`` (32).
* ClientFinish (buyer → node): ``resume_block`` (u32be), ``buyer_sig`` (64), ``buyer_mac`` (32).

Derivations (``LABEL = "aimarket-delivery/1"``)::

    TH   = SHA-256(lp(LABEL+" transcript") || lp(version) || lp(seller_key) || lp(buyer_key)
                   || lp(token) || lp(buyer_eph) || lp(buyer_ts) || lp(buyer_nonce)
                   || lp(node_eph) || lp(node_ts) || lp(node_nonce))
    OKM  = HKDF-SHA256(ikm = X25519(eph, peer_eph), salt = TH, info = LABEL+" keys", L = 128)
    key_node_to_buyer, key_buyer_to_node, confirm_node, confirm_buyer = OKM split in 32-byte parts
    node_sig  = Ed25519_device(lp(LABEL+" server signature") || TH)
    node_mac  = HMAC-SHA256(confirm_node, lp(LABEL+" server confirm") || TH)
    TH2  = SHA-256(lp(LABEL+" client finish") || lp(TH) || lp(node_sig) || lp(node_mac) || lp(resume_block))
    buyer_sig = Ed25519_cnf(lp(LABEL+" client signature") || TH2)
    buyer_mac = HMAC-SHA256(confirm_buyer, lp(LABEL+" client confirm") || TH2)

``seller_key`` is the Ed25519 key in the hub-signed token's ``seller_keys``: the buyer checks
``node_sig`` under it and under nothing else; the node checks that the token's key is its own
device key. The node checks the token (hub signature, audience = its device id, deadlines) and
that ``buyer_key``'s RFC 7638 thumbprint is ``cnf.jkt``. Each side refuses a peer timestamp
more than 30 s from its clock. ``TH2`` names the session (receipts carry it). Only the two
ephemeral keys meet in X25519: the hub never learns the session keys.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from domain.model.delivery import CLOCK_SKEW_S, DeliveryClaims, verify_delivery_token
from domain.model.errors import (
    DeliveryClockSkew,
    DeliveryHandshakeFailed,
    DeliveryPossessionFailed,
    DeliveryTokenInvalid,
    InvalidInput,
    SignatureInvalid,
)
from domain.model.keys import KxPrivateKey, SigningKey, VerifyKey

VERSION = 1
LABEL = b"aimarket-delivery/1"
NONCE_BYTES = 32
MAX_TOKEN_BYTES = 8192
_U32 = struct.Struct(">I")


def lp(data: bytes) -> bytes:
    """``u32be(len(data)) || data``."""
    return _U32.pack(len(data)) + data


def split_fields(payload: bytes, lengths: Sequence[int | None]) -> list[bytes]:
    """Parse exactly ``len(lengths)`` length-prefixed fields (``None`` = any length up to the token
    bound); anything missing, longer, shorter or trailing is DeliveryHandshakeFailed."""
    fields, pos = [], 0
    for expected in lengths:
        if pos + 4 > len(payload):
            raise DeliveryHandshakeFailed("handshake message truncated")
        (size,) = _U32.unpack_from(payload, pos)
        pos += 4
        if (expected is not None and size != expected) or size > MAX_TOKEN_BYTES or pos + size > len(payload):
            raise DeliveryHandshakeFailed("handshake field has the wrong length")
        fields.append(payload[pos : pos + size])
        pos += size
    if pos != len(payload):
        raise DeliveryHandshakeFailed("trailing bytes after the handshake message")
    return fields


def _check_skew(peer_ms: int, now_ms: int, skew_s: int) -> None:
    if abs(peer_ms - now_ms) > skew_s * 1000:
        raise DeliveryClockSkew(f"peer clock is {abs(peer_ms - now_ms) // 1000} s away from ours")


def transcript_hash(*, seller_key: bytes, buyer_key: bytes, token: bytes, buyer_eph: bytes, buyer_ts: bytes,
                    buyer_nonce: bytes, node_eph: bytes, node_ts: bytes, node_nonce: bytes) -> bytes:
    """``TH`` (see the module docstring)."""
    parts = [LABEL + b" transcript", struct.pack(">H", VERSION), seller_key, buyer_key, token, buyer_eph, buyer_ts,
             buyer_nonce, node_eph, node_ts, node_nonce]
    return hashlib.sha256(b"".join(lp(p) for p in parts)).digest()


def derive_keys(own_eph: KxPrivateKey, peer_eph: bytes, th: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """``(key_node_to_buyer, key_buyer_to_node, confirm_node, confirm_buyer)`` from X25519 + HKDF."""
    try:
        shared = nacl.bindings.crypto_scalarmult(own_eph.export_bytes(), peer_eph)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.CryptoError, ValueError) as exc:
        raise DeliveryHandshakeFailed("the peer's ephemeral key gives no shared secret") from exc
    okm = HKDF(algorithm=hashes.SHA256(), length=128, salt=th, info=LABEL + b" keys").derive(shared)
    return okm[0:32], okm[32:64], okm[64:96], okm[96:128]


def client_finish_hash(th: bytes, node_sig: bytes, node_mac: bytes, resume_block: int) -> bytes:
    """``TH2`` (see the module docstring)."""
    parts = [LABEL + b" client finish", th, node_sig, node_mac, _U32.pack(resume_block)]
    return hashlib.sha256(b"".join(lp(p) for p in parts)).digest()


def _mac(key: bytes, label: bytes, th: bytes) -> bytes:
    return hmac.new(key, lp(LABEL + label) + th, hashlib.sha256).digest()


def _signed(label: bytes, th: bytes) -> bytes:
    return lp(LABEL + label) + th


@dataclass(frozen=True, slots=True)
class Session:
    """What a finished handshake gives one side.

    Attributes:
        send_key, recv_key: secretstream keys for our direction and the peer's.
        transcript_hash: ``TH``; session_id: ``TH2``.
        resume_block: the first block the node sends.
        claims: the verified token; buyer_key: the buyer's per-purchase key.
    """

    send_key: bytes
    recv_key: bytes
    transcript_hash: bytes
    session_id: bytes
    resume_block: int
    claims: DeliveryClaims
    buyer_key: VerifyKey


class ClientHandshake:
    """The buyer's side. ``hello`` is sent first; :meth:`receive_server_hello` answers the finish."""

    def __init__(self, *, claims: DeliveryClaims, buyer_key: SigningKey, eph: KxPrivateKey, nonce: bytes,
                 now_ms: int, resume_block: int = 0, skew_s: int = CLOCK_SKEW_S) -> None:
        if len(nonce) != NONCE_BYTES or not 0 <= resume_block < 2**32:
            raise InvalidInput("a 32-byte nonce and a u32 resume block are required")
        claims.check_buyer_key(buyer_key.verify_key)
        self._claims, self._key, self._eph, self._skew_s = claims, buyer_key, eph, skew_s
        self._resume_block = resume_block
        self._fields = {"token": claims.token.encode("ascii"), "buyer_eph": eph.public_key.to_bytes(),
                        "buyer_key": buyer_key.verify_key.to_bytes(), "buyer_ts": struct.pack(">Q", now_ms),
                        "buyer_nonce": nonce}
        f = self._fields
        self.hello = b"".join(lp(x) for x in (struct.pack(">H", VERSION), f["token"], f["buyer_eph"], f["buyer_key"],
                                              f["buyer_ts"], f["buyer_nonce"]))
        self._done = False

    def receive_server_hello(self, payload: bytes, now_ms: int) -> tuple[bytes, Session]:
        """Check the node's ServerHello; return the ClientFinish to send and the session.

        Raises:
            DeliveryHandshakeFailed: malformed or repeated; DeliveryClockSkew;
            DeliveryPossessionFailed: the node's signature (under the token's seller key) or MAC fails.
        """
        if self._done:
            raise DeliveryHandshakeFailed("ServerHello already received")
        self._done = True
        node_eph, node_ts, node_nonce, node_sig, node_mac = split_fields(payload, (32, 8, NONCE_BYTES, 64, 32))
        _check_skew(struct.unpack(">Q", node_ts)[0], now_ms, self._skew_s)
        th = transcript_hash(seller_key=self._claims.seller_key.to_bytes(), node_eph=node_eph, node_ts=node_ts,
                             node_nonce=node_nonce, **self._fields)
        try:
            self._claims.seller_key.verify(_signed(b" server signature", th), node_sig)
        except SignatureInvalid as exc:
            raise DeliveryPossessionFailed("the node's signature does not verify under the token's seller key") from exc
        n2b, b2n, confirm_node, confirm_buyer = derive_keys(self._eph, node_eph, th)
        if not hmac.compare_digest(_mac(confirm_node, b" server confirm", th), node_mac):
            raise DeliveryPossessionFailed("the node's key confirmation failed")
        th2 = client_finish_hash(th, node_sig, node_mac, self._resume_block)
        finish = b"".join(lp(x) for x in (_U32.pack(self._resume_block), self._key.sign(_signed(b" client signature", th2)),
                                          _mac(confirm_buyer, b" client confirm", th2)))
        return finish, Session(b2n, n2b, th, th2, self._resume_block, self._claims, self._key.verify_key)


class ServerHandshake:
    """The node's side: :meth:`receive_hello`, then :meth:`server_hello`, then :meth:`receive_finish`."""

    def __init__(self, *, device_keys: Sequence[SigningKey], device_id: str, hub_keys_by_kid: Mapping[str, VerifyKey],
                 eph: KxPrivateKey, nonce: bytes, skew_s: int = CLOCK_SKEW_S) -> None:
        if len(nonce) != NONCE_BYTES or not device_keys:
            raise InvalidInput("a 32-byte nonce and the device key are required")
        self._device_keys, self._device_id, self._hub_keys = list(device_keys), device_id, hub_keys_by_kid
        self._eph, self._nonce, self._skew_s = eph, nonce, skew_s
        self._state = "hello"

    def receive_hello(self, payload: bytes, now_ms: int) -> DeliveryClaims:
        """Check a ClientHello: version, token (the start deadline is the caller's, who knows if
        the ``jti`` is bound), our key in ``seller_keys``, ``cnf``, the buyer's clock.

        Raises:
            DeliveryHandshakeFailed, DeliveryClockSkew, every token error, DeliveryCnfMismatch.
        """
        if self._state != "hello":
            raise DeliveryHandshakeFailed("ClientHello out of order")
        self._state = "reply"
        version, token, buyer_eph, buyer_key, buyer_ts, buyer_nonce = split_fields(
            payload, (2, None, 32, 32, 8, NONCE_BYTES))
        if struct.unpack(">H", version)[0] != VERSION:
            raise DeliveryHandshakeFailed(f"unsupported protocol version; this node speaks {VERSION}")
        try:
            token_text = token.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DeliveryTokenInvalid("the token is not ASCII") from exc
        claims = verify_delivery_token(token_text, self._hub_keys, audience=self._device_id, now_s=now_ms // 1000,
                                       skew_s=self._skew_s, require_start=False)
        self._signer = next((k for k in self._device_keys if k.verify_key == claims.seller_key), None)
        if self._signer is None:
            raise DeliveryHandshakeFailed("the token names a device key this node does not hold")
        try:
            self._buyer_key = VerifyKey.from_bytes(buyer_key)
        except InvalidInput as exc:
            raise DeliveryHandshakeFailed("the buyer key is not a valid Ed25519 key") from exc
        claims.check_buyer_key(self._buyer_key)
        _check_skew(struct.unpack(">Q", buyer_ts)[0], now_ms, self._skew_s)
        self._claims = claims
        self._fields = {"token": token, "buyer_eph": buyer_eph, "buyer_key": buyer_key, "buyer_ts": buyer_ts,
                        "buyer_nonce": buyer_nonce}
        return claims

    def server_hello(self, now_ms: int) -> bytes:
        """The ServerHello for the accepted ClientHello."""
        if self._state != "reply":
            raise DeliveryHandshakeFailed("ServerHello out of order")
        self._state = "finish"
        node_eph, node_ts = self._eph.public_key.to_bytes(), struct.pack(">Q", now_ms)
        self._th = transcript_hash(seller_key=self._signer.verify_key.to_bytes(), node_eph=node_eph, node_ts=node_ts,
                                   node_nonce=self._nonce, **self._fields)
        self._keys = derive_keys(self._eph, self._fields["buyer_eph"], self._th)
        self._sig = self._signer.sign(_signed(b" server signature", self._th))
        self._node_mac = _mac(self._keys[2], b" server confirm", self._th)
        return b"".join(lp(x) for x in (node_eph, node_ts, self._nonce, self._sig, self._node_mac))

    def receive_finish(self, payload: bytes) -> Session:
        """Check the buyer's ClientFinish (MAC, then the signature by the ``cnf`` key).

        Raises:
            DeliveryHandshakeFailed: malformed or out of order;
            DeliveryPossessionFailed: the buyer does not hold the ``cnf`` key (or the MAC fails).
        """
        if self._state != "finish":
            raise DeliveryHandshakeFailed("ClientFinish out of order")
        self._state = "done"
        resume, buyer_sig, buyer_mac = split_fields(payload, (4, 64, 32))
        resume_block = _U32.unpack(resume)[0]
        th2 = client_finish_hash(self._th, self._sig, self._node_mac, resume_block)
        if not hmac.compare_digest(_mac(self._keys[3], b" client confirm", th2), buyer_mac):
            raise DeliveryPossessionFailed("the buyer's key confirmation failed")
        try:
            self._buyer_key.verify(_signed(b" client signature", th2), buyer_sig)
        except SignatureInvalid as exc:
            raise DeliveryPossessionFailed("the buyer does not prove the token's cnf key") from exc
        n2b, b2n = self._keys[0], self._keys[1]
        return Session(n2b, b2n, self._th, th2, resume_block, self._claims, self._buyer_key)
