"""The compute handshake ``aimarket-invoke/1``: ``aimarket-delivery/1`` (``domain.model.handshake``)
with its own label, the invoke token, and ``last_seq`` in place of ``resume_block``.

Messages (plaintext handshake frames; ``lp(x) = u32be(len(x)) || x``; exactly these fields):

* ClientHello: ``version`` (u16be = 1), ``token`` (the invoke token, ASCII), ``buyer_eph``
  (X25519, 32), ``buyer_key`` (Ed25519, 32; its thumbprint is ``cnf.jkt``), ``buyer_ts`` (u64be
  ms), ``buyer_nonce`` (32).
* ServerHello: ``node_eph`` (32), ``node_ts`` (u64be ms), ``node_nonce`` (32), ``node_sig`` (64),
  ``node_mac`` (32).
* ClientFinish: ``last_seq`` (u32be: the highest receipt ``seq`` the buyer holds for this token,
  0 for none), ``buyer_sig`` (64), ``buyer_mac`` (32).

With ``L = "aimarket-invoke/1"`` the derivations are the delivery ones letter for letter::

    TH  = SHA-256(lp(L+" transcript") || lp(u16be(1)) || lp(seller_key) || lp(buyer_key) || lp(token)
                  || lp(buyer_eph) || lp(buyer_ts) || lp(buyer_nonce) || lp(node_eph) || lp(node_ts) || lp(node_nonce))
    OKM = HKDF-SHA256(ikm = X25519(eph, peer_eph), salt = TH, info = L+" keys", length = 128)
        = key_node_to_buyer || key_buyer_to_node || confirm_node || confirm_buyer
    node_sig  = Ed25519(device key, lp(L+" server signature") || TH)
    node_mac  = HMAC-SHA256(confirm_node, lp(L+" server confirm") || TH)
    TH2 = SHA-256(lp(L+" client finish") || lp(TH) || lp(node_sig) || lp(node_mac) || lp(u32be(last_seq)))
    buyer_sig = Ed25519(cnf key, lp(L+" client signature") || TH2)
    buyer_mac = HMAC-SHA256(confirm_buyer, lp(L+" client confirm") || TH2)

A distinct label means no delivery transcript, signature or key can ever be taken for a compute
one (and the token ``typ`` differs too). ``TH2`` names the connection: receipts carry it.
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

from domain.model.delivery import CLOCK_SKEW_S
from domain.model.errors import (
    DeliveryHandshakeFailed,
    InvalidInput,
    InvokeClockSkew,
    InvokeHandshakeFailed,
    InvokePossessionFailed,
    InvokeTokenInvalid,
    SignatureInvalid,
)
from domain.model.handshake import NONCE_BYTES, VERSION, lp, split_fields
from domain.model.invoke import InvokeClaims, verify_invoke_token
from domain.model.keys import KxPrivateKey, SigningKey, VerifyKey

LABEL = b"aimarket-invoke/1"
HELLO_FIELDS = (2, None, 32, 32, 8, NONCE_BYTES)
_U32 = struct.Struct(">I")


def _fields(payload: bytes, lengths: Sequence[int | None]) -> list[bytes]:
    try:
        return split_fields(payload, lengths)
    except DeliveryHandshakeFailed as exc:
        raise InvokeHandshakeFailed(exc.detail) from exc


def _check_skew(peer_ms: int, now_ms: int, skew_s: int) -> None:
    if abs(peer_ms - now_ms) > skew_s * 1000:
        raise InvokeClockSkew(f"peer clock is {abs(peer_ms - now_ms) // 1000} s away from ours")


def transcript_hash(*, seller_key: bytes, buyer_key: bytes, token: bytes, buyer_eph: bytes, buyer_ts: bytes,
                    buyer_nonce: bytes, node_eph: bytes, node_ts: bytes, node_nonce: bytes) -> bytes:
    """``TH`` (see the module docstring)."""
    parts = [LABEL + b" transcript", struct.pack(">H", VERSION), seller_key, buyer_key, token, buyer_eph, buyer_ts,
             buyer_nonce, node_eph, node_ts, node_nonce]
    return hashlib.sha256(b"".join(lp(p) for p in parts)).digest()


def derive_keys(own_eph: KxPrivateKey, peer_eph: bytes, th: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """``(key_node_to_buyer, key_buyer_to_node, confirm_node, confirm_buyer)``."""
    try:
        shared = nacl.bindings.crypto_scalarmult(own_eph.export_bytes(), peer_eph)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.CryptoError, ValueError) as exc:
        raise InvokeHandshakeFailed("the peer's ephemeral key gives no shared secret") from exc
    okm = HKDF(algorithm=hashes.SHA256(), length=128, salt=th, info=LABEL + b" keys").derive(shared)
    return okm[0:32], okm[32:64], okm[64:96], okm[96:128]


def client_finish_hash(th: bytes, node_sig: bytes, node_mac: bytes, last_seq: int) -> bytes:
    """``TH2`` (see the module docstring)."""
    parts = [LABEL + b" client finish", th, node_sig, node_mac, _U32.pack(last_seq)]
    return hashlib.sha256(b"".join(lp(p) for p in parts)).digest()


def _mac(key: bytes, label: bytes, th: bytes) -> bytes:
    return hmac.new(key, lp(LABEL + label) + th, hashlib.sha256).digest()


def _signed(label: bytes, th: bytes) -> bytes:
    return lp(LABEL + label) + th


@dataclass(frozen=True, slots=True)
class InvokeConnection:
    """What a finished handshake gives one side: the two secretstream keys, ``TH``, the
    connection id ``TH2``, the buyer's ``last_seq``, the verified token and the buyer's key."""

    send_key: bytes
    recv_key: bytes
    transcript_hash: bytes
    connection_id: bytes
    last_seq: int
    claims: InvokeClaims
    buyer_key: VerifyKey


class InvokeClientHandshake:
    """The buyer's side: send :attr:`hello`, then :meth:`receive_server_hello`."""

    def __init__(self, *, claims: InvokeClaims, buyer_key: SigningKey, eph: KxPrivateKey, nonce: bytes, now_ms: int,
                 last_seq: int = 0, skew_s: int = CLOCK_SKEW_S) -> None:
        if len(nonce) != NONCE_BYTES or not 0 <= last_seq < 2**32:
            raise InvalidInput("a 32-byte nonce and a u32 last_seq are required")
        claims.check_buyer_key(buyer_key.verify_key)
        self._claims, self._key, self._eph, self._skew_s, self._last_seq = claims, buyer_key, eph, skew_s, last_seq
        self._fields = {"token": claims.token.encode("ascii"), "buyer_eph": eph.public_key.to_bytes(),
                        "buyer_key": buyer_key.verify_key.to_bytes(), "buyer_ts": struct.pack(">Q", now_ms),
                        "buyer_nonce": nonce}
        f = self._fields
        self.hello = b"".join(lp(x) for x in (struct.pack(">H", VERSION), f["token"], f["buyer_eph"], f["buyer_key"],
                                              f["buyer_ts"], f["buyer_nonce"]))
        self._done = False

    def receive_server_hello(self, payload: bytes, now_ms: int) -> tuple[bytes, InvokeConnection]:
        """Check the node's ServerHello; return the ClientFinish to send and the connection.

        Raises:
            InvokeHandshakeFailed, InvokeClockSkew, InvokePossessionFailed (the node's signature
            under the token's seller key, or its MAC).
        """
        if self._done:
            raise InvokeHandshakeFailed("ServerHello already received")
        self._done = True
        node_eph, node_ts, node_nonce, node_sig, node_mac = _fields(payload, (32, 8, NONCE_BYTES, 64, 32))
        _check_skew(struct.unpack(">Q", node_ts)[0], now_ms, self._skew_s)
        th = transcript_hash(seller_key=self._claims.seller_key.to_bytes(), node_eph=node_eph, node_ts=node_ts,
                             node_nonce=node_nonce, **self._fields)
        try:
            self._claims.seller_key.verify(_signed(b" server signature", th), node_sig)
        except SignatureInvalid as exc:
            raise InvokePossessionFailed("the node's signature does not verify under the token's seller key") from exc
        n2b, b2n, confirm_node, confirm_buyer = derive_keys(self._eph, node_eph, th)
        if not hmac.compare_digest(_mac(confirm_node, b" server confirm", th), node_mac):
            raise InvokePossessionFailed("the node's key confirmation failed")
        th2 = client_finish_hash(th, node_sig, node_mac, self._last_seq)
        finish = b"".join(lp(x) for x in (_U32.pack(self._last_seq), self._key.sign(_signed(b" client signature", th2)),
                                          _mac(confirm_buyer, b" client confirm", th2)))
        return finish, InvokeConnection(b2n, n2b, th, th2, self._last_seq, self._claims, self._key.verify_key)


class InvokeServerHandshake:
    """The node's side: :meth:`receive_hello`, :meth:`server_hello`, :meth:`receive_finish`."""

    def __init__(self, *, device_keys: Sequence[SigningKey], device_id: str, hub_keys_by_kid: Mapping[str, VerifyKey],
                 eph: KxPrivateKey, nonce: bytes, skew_s: int = CLOCK_SKEW_S) -> None:
        if len(nonce) != NONCE_BYTES or not device_keys:
            raise InvalidInput("a 32-byte nonce and the device key are required")
        self._device_keys, self._device_id, self._hub_keys = list(device_keys), device_id, hub_keys_by_kid
        self._eph, self._nonce, self._skew_s = eph, nonce, skew_s
        self._state = "hello"

    def receive_hello(self, payload: bytes, now_ms: int) -> InvokeClaims:
        """Check a ClientHello: version, token (the start deadline is the caller's: it knows
        whether the ``jti`` is bound), our key in ``seller_keys``, ``cnf``, the buyer's clock."""
        if self._state != "hello":
            raise InvokeHandshakeFailed("ClientHello out of order")
        self._state = "reply"
        version, token, buyer_eph, buyer_key, buyer_ts, buyer_nonce = _fields(payload, HELLO_FIELDS)
        if struct.unpack(">H", version)[0] != VERSION:
            raise InvokeHandshakeFailed(f"unsupported protocol version; this node speaks {VERSION}")
        try:
            token_text = token.decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvokeTokenInvalid("the token is not ASCII") from exc
        claims = verify_invoke_token(token_text, self._hub_keys, audience=self._device_id, now_s=now_ms // 1000,
                                     skew_s=self._skew_s, require_start=False)
        self._signer = next((k for k in self._device_keys if k.verify_key == claims.seller_key), None)
        if self._signer is None:
            raise InvokeHandshakeFailed("the token names a device key this node does not hold")
        try:
            self._buyer_key = VerifyKey.from_bytes(buyer_key)
        except InvalidInput as exc:
            raise InvokeHandshakeFailed("the buyer key is not a valid Ed25519 key") from exc
        claims.check_buyer_key(self._buyer_key)
        _check_skew(struct.unpack(">Q", buyer_ts)[0], now_ms, self._skew_s)
        self._claims = claims
        self._fields = {"token": token, "buyer_eph": buyer_eph, "buyer_key": buyer_key, "buyer_ts": buyer_ts,
                        "buyer_nonce": buyer_nonce}
        return claims

    def server_hello(self, now_ms: int) -> bytes:
        """The ServerHello for the accepted ClientHello."""
        if self._state != "reply":
            raise InvokeHandshakeFailed("ServerHello out of order")
        self._state = "finish"
        node_eph, node_ts = self._eph.public_key.to_bytes(), struct.pack(">Q", now_ms)
        self._th = transcript_hash(seller_key=self._signer.verify_key.to_bytes(), node_eph=node_eph, node_ts=node_ts,
                                   node_nonce=self._nonce, **self._fields)
        self._keys = derive_keys(self._eph, self._fields["buyer_eph"], self._th)
        self._sig = self._signer.sign(_signed(b" server signature", self._th))
        self._node_mac = _mac(self._keys[2], b" server confirm", self._th)
        return b"".join(lp(x) for x in (node_eph, node_ts, self._nonce, self._sig, self._node_mac))

    def receive_finish(self, payload: bytes) -> InvokeConnection:
        """Check the buyer's ClientFinish (MAC, then the signature by the ``cnf`` key)."""
        if self._state != "finish":
            raise InvokeHandshakeFailed("ClientFinish out of order")
        self._state = "done"
        last, buyer_sig, buyer_mac = _fields(payload, (4, 64, 32))
        last_seq = _U32.unpack(last)[0]
        th2 = client_finish_hash(self._th, self._sig, self._node_mac, last_seq)
        if not hmac.compare_digest(_mac(self._keys[3], b" client confirm", th2), buyer_mac):
            raise InvokePossessionFailed("the buyer's key confirmation failed")
        try:
            self._buyer_key.verify(_signed(b" client signature", th2), buyer_sig)
        except SignatureInvalid as exc:
            raise InvokePossessionFailed("the buyer does not prove the token's cnf key") from exc
        return InvokeConnection(self._keys[0], self._keys[1], self._th, th2, last_seq, self._claims, self._buyer_key)
