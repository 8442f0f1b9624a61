"""Typed keys: Ed25519 signing/verification and X25519 key exchange (PyNaCl / libsodium).

Keys travel through the code as these objects, never as hex strings. Verification raises
:class:`~domain.model.errors.SignatureInvalid` and never returns False; comparisons of key bytes
are constant time. Secret material never appears in ``repr``/``str``.

Text forms:

* **Multibase** public keys are ``"z" + base58btc(multicodec || raw)`` with the multicodec
  varints ``0xed 0x01`` (ed25519-pub, ``z6Mk…``) and ``0xec 0x01`` (x25519-pub, ``z6LS…``);
  an Ed25519 *private* key uses ``0x80 0x26`` (ed25519-priv, ``z3u2…``, as in the W3C
  vc-di-eddsa test vectors).
* **did:key** is ``"did:key:" + multibase`` and its single verification method is
  ``did + "#" + multibase`` (W3C CCG did:key method).
* **key_id** is ``"ed25519:" + first 16 hex chars of SHA-256(raw public key)`` (64 bits):
  short, stable, and safe to log. It names a key in tables and headers (JWT ``kid``); it is
  not a security boundary: always compare the full key before trusting it.

Device and platform keys are kept separate: there is deliberately no Ed25519→X25519
conversion here; a node holds an independent X25519 key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

import base58
import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from domain.model.errors import InvalidInput, SignatureInvalid

ED25519_PUB_CODEC = b"\xed\x01"
ED25519_PRIV_CODEC = b"\x80\x26"
X25519_PUB_CODEC = b"\xec\x01"
DID_KEY_PREFIX = "did:key:"
SIGNATURE_BYTES = 64
KEY_BYTES = 32

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


# ---------------------------------------------------------------------------------------------
# encodings


def b64url(data: bytes) -> str:
    """Encode bytes as unpadded base64url (RFC 4648 §5), the JOSE form."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput("b64url takes bytes")
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly.

    Refuses padding, characters outside the URL-safe alphabet, impossible lengths and
    non-canonical encodings (non-zero trailing bits), so one byte string has one text form.

    Raises:
        InvalidInput: on anything but a canonical unpadded base64url string.
    """
    if not isinstance(text, str) or not _B64URL.match(text) or len(text) % 4 == 1:
        raise InvalidInput("malformed base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("malformed base64url") from exc
    if b64url(raw) != text:
        raise InvalidInput("non-canonical base64url")
    return raw


def multibase_encode(codec: bytes, raw: bytes) -> str:
    """Return ``"z" + base58btc(codec || raw)`` (multibase base58btc with a multicodec prefix)."""
    return "z" + base58.b58encode(codec + raw).decode("ascii")


def multibase_decode(text: str, codec: bytes, length: int = KEY_BYTES) -> bytes:
    """Decode a ``z…`` multibase string, check its multicodec prefix and length, return the raw bytes.

    Raises:
        InvalidInput: wrong multibase prefix, bad base58, wrong codec or wrong length.
    """
    if not isinstance(text, str) or len(text) < 2 or text[0] != "z" or len(text) > 200:
        raise InvalidInput("expected a base58btc multibase string starting with 'z'")
    try:
        decoded = base58.b58decode(text[1:])
    except ValueError as exc:
        raise InvalidInput("malformed base58btc") from exc
    if "z" + base58.b58encode(decoded).decode("ascii") != text:
        raise InvalidInput("non-canonical base58btc")
    if not decoded.startswith(codec):
        raise InvalidInput(f"unexpected multicodec prefix {decoded[:2].hex()}; expected {codec.hex()}")
    raw = decoded[len(codec) :]
    if len(raw) != length:
        raise InvalidInput(f"expected {length} key bytes, got {len(raw)}")
    return raw


def _bytes_arg(value: object, length: int, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"{what} must be bytes")
    raw = bytes(value)
    if len(raw) != length:
        raise InvalidInput(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


# ---------------------------------------------------------------------------------------------
# Ed25519


class VerifyKey:
    """An Ed25519 public key.

    Construction refuses encodings that are not valid curve points or are of small order
    (libsodium ``crypto_core_ed25519_is_valid_point``), so a key that could "verify" forged
    signatures for any message is never accepted.
    """

    __slots__ = ("_nacl", "_raw")

    def __init__(self, raw: bytes) -> None:
        """Prefer :meth:`from_bytes`; ``raw`` is the 32-byte encoded public key."""
        raw = _bytes_arg(raw, KEY_BYTES, "Ed25519 public key")
        if not nacl.bindings.crypto_core_ed25519_is_valid_point(raw):
            raise InvalidInput("not a valid Ed25519 public key (invalid or small-order point)")
        self._raw = raw
        self._nacl = nacl.signing.VerifyKey(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> VerifyKey:
        """Build from the 32 raw public-key bytes (RFC 8032 encoding)."""
        return cls(raw)

    @classmethod
    def from_multibase(cls, text: str) -> VerifyKey:
        """Build from ``z6Mk…`` (base58btc, multicodec ed25519-pub 0xed01)."""
        return cls(multibase_decode(text, ED25519_PUB_CODEC))

    @classmethod
    def from_did_key(cls, did: str) -> VerifyKey:
        """Build from ``did:key:z6Mk…``, optionally followed by ``#z6Mk…`` (the same key).

        Raises:
            InvalidInput: not an Ed25519 did:key, or a fragment naming a different key.
        """
        if not isinstance(did, str) or not did.startswith(DID_KEY_PREFIX):
            raise InvalidInput("expected a did:key identifier")
        body, sep, fragment = did[len(DID_KEY_PREFIX) :].partition("#")
        if sep and fragment != body:
            raise InvalidInput("did:key fragment must repeat the key's multibase value")
        return cls.from_multibase(body)

    def to_bytes(self) -> bytes:
        """The 32 raw public-key bytes."""
        return self._raw

    def __bytes__(self) -> bytes:
        return self._raw

    def to_multibase(self) -> str:
        """``z6Mk…`` multibase form (the did:key method-specific id)."""
        return multibase_encode(ED25519_PUB_CODEC, self._raw)

    @property
    def did_key(self) -> str:
        """``did:key:z6Mk…``."""
        return DID_KEY_PREFIX + self.to_multibase()

    @property
    def verification_method(self) -> str:
        """The did:key verification method id, ``did:key:z6Mk…#z6Mk…``."""
        mb = self.to_multibase()
        return f"{DID_KEY_PREFIX}{mb}#{mb}"

    @property
    def key_id(self) -> str:
        """``"ed25519:" + first 16 hex chars of SHA-256(raw key)``: a short stable name."""
        return "ed25519:" + hashlib.sha256(self._raw).hexdigest()[:16]

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check a detached 64-byte Ed25519 signature over ``message``.

        Returns None on success. Never returns False.

        Raises:
            SignatureInvalid: the signature is malformed or does not verify.
            InvalidInput: ``message`` or ``signature`` is not bytes.
        """
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise InvalidInput("message must be bytes")
        if not isinstance(signature, (bytes, bytearray, memoryview)):
            raise InvalidInput("signature must be bytes")
        if len(signature) != SIGNATURE_BYTES:
            raise SignatureInvalid("signature must be 64 bytes")
        try:
            self._nacl.verify(bytes(message), bytes(signature))
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError) as exc:
            raise SignatureInvalid("signature does not verify", key_id=self.key_id) from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifyKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((VerifyKey, self._raw))

    def __repr__(self) -> str:
        return f"VerifyKey({self.to_multibase()!r})"


class SigningKey:
    """An Ed25519 private key (the 32-byte RFC 8032 seed). Secret: never printed.

    ``generate()`` draws from the OS CSPRNG; aggregates never call it (keys come in as
    arguments from the node or platform layer).
    """

    __slots__ = ("_nacl", "_verify_key")

    def __init__(self, seed: bytes) -> None:
        """Prefer :meth:`from_seed`; ``seed`` is the 32-byte private seed."""
        seed = _bytes_arg(seed, KEY_BYTES, "Ed25519 seed")
        self._nacl = nacl.signing.SigningKey(seed)
        self._verify_key = VerifyKey(bytes(self._nacl.verify_key))

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key (OS CSPRNG via libsodium)."""
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Build from the 32-byte RFC 8032 private key (seed)."""
        return cls(seed)

    @classmethod
    def from_multibase(cls, text: str) -> SigningKey:
        """Build from ``z3u2…`` (base58btc, multicodec ed25519-priv 0x8026)."""
        return cls(multibase_decode(text, ED25519_PRIV_CODEC))

    @property
    def verify_key(self) -> VerifyKey:
        """The matching public key."""
        return self._verify_key

    @property
    def key_id(self) -> str:
        """The public key's :attr:`VerifyKey.key_id`."""
        return self._verify_key.key_id

    def sign(self, message: bytes) -> bytes:
        """Return the detached 64-byte Ed25519 signature of ``message`` (deterministic)."""
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise InvalidInput("message must be bytes")
        return self._nacl.sign(bytes(message)).signature

    def export_seed(self) -> bytes:
        """The 32 secret seed bytes, for the keystore only. Handle as a secret."""
        return bytes(self._nacl)

    def export_multibase(self) -> str:
        """The secret key as ``z3u2…`` multibase. Handle as a secret."""
        return multibase_encode(ED25519_PRIV_CODEC, self.export_seed())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SigningKey):
            return NotImplemented
        return hmac.compare_digest(self.export_seed(), other.export_seed())

    def __hash__(self) -> int:
        return hash((SigningKey, self._verify_key.to_bytes()))

    def __repr__(self) -> str:
        return f"SigningKey(public={self._verify_key.to_multibase()!r})"

    __str__ = __repr__

    def __reduce__(self) -> None:
        raise TypeError("SigningKey is not picklable; store it through node.keystore")

    # Immutable: copies may share the object (dataclasses.replace, copy.deepcopy).
    def __copy__(self) -> SigningKey:
        return self

    def __deepcopy__(self, memo: dict) -> SigningKey:
        return self


# ---------------------------------------------------------------------------------------------
# X25519


class KxPublicKey:
    """An X25519 public key for key agreement (``crypto_kx`` / ``crypto_box``)."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        """Prefer :meth:`from_bytes`; ``raw`` is the 32-byte Montgomery u-coordinate."""
        raw = _bytes_arg(raw, KEY_BYTES, "X25519 public key")
        if hmac.compare_digest(raw, bytes(KEY_BYTES)):
            raise InvalidInput("the all-zero X25519 public key is not allowed")
        self._raw = raw

    @classmethod
    def from_bytes(cls, raw: bytes) -> KxPublicKey:
        """Build from the 32 raw bytes."""
        return cls(raw)

    @classmethod
    def from_multibase(cls, text: str) -> KxPublicKey:
        """Build from ``z6LS…`` (base58btc, multicodec x25519-pub 0xec01)."""
        return cls(multibase_decode(text, X25519_PUB_CODEC))

    def to_bytes(self) -> bytes:
        """The 32 raw bytes."""
        return self._raw

    def __bytes__(self) -> bytes:
        return self._raw

    def to_multibase(self) -> str:
        """``z6LS…`` multibase form."""
        return multibase_encode(X25519_PUB_CODEC, self._raw)

    @property
    def key_id(self) -> str:
        """``"x25519:" + first 16 hex chars of SHA-256(raw key)``."""
        return "x25519:" + hashlib.sha256(self._raw).hexdigest()[:16]

    def to_nacl(self) -> nacl.public.PublicKey:
        """The PyNaCl object, for ``nacl.public.Box`` and friends."""
        return nacl.public.PublicKey(self._raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KxPublicKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((KxPublicKey, self._raw))

    def __repr__(self) -> str:
        return f"KxPublicKey({self.to_multibase()!r})"


class KxPrivateKey:
    """An X25519 private key (32 bytes). Secret: never printed."""

    __slots__ = ("_nacl", "_public")

    def __init__(self, raw: bytes) -> None:
        """Prefer :meth:`from_bytes`; ``raw`` is the 32-byte private scalar."""
        raw = _bytes_arg(raw, KEY_BYTES, "X25519 private key")
        self._nacl = nacl.public.PrivateKey(raw)
        self._public = KxPublicKey(bytes(self._nacl.public_key))

    @classmethod
    def generate(cls) -> KxPrivateKey:
        """A fresh random key (OS CSPRNG via libsodium)."""
        return cls(bytes(nacl.public.PrivateKey.generate()))

    @classmethod
    def from_bytes(cls, raw: bytes) -> KxPrivateKey:
        """Build from the 32 secret bytes."""
        return cls(raw)

    @property
    def public_key(self) -> KxPublicKey:
        """The matching public key."""
        return self._public

    def export_bytes(self) -> bytes:
        """The 32 secret bytes, for the keystore or ``crypto_kx`` only. Handle as a secret."""
        return bytes(self._nacl)

    def to_nacl(self) -> nacl.public.PrivateKey:
        """The PyNaCl object, for ``nacl.public.Box`` and friends."""
        return self._nacl

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KxPrivateKey):
            return NotImplemented
        return hmac.compare_digest(self.export_bytes(), other.export_bytes())

    def __hash__(self) -> int:
        return hash((KxPrivateKey, self._public.to_bytes()))

    def __repr__(self) -> str:
        return f"KxPrivateKey(public={self._public.to_multibase()!r})"

    __str__ = __repr__

    def __reduce__(self) -> None:
        raise TypeError("KxPrivateKey is not picklable; store it through node.keystore")

    # Immutable: copies may share the object (dataclasses.replace, copy.deepcopy).
    def __copy__(self) -> KxPrivateKey:
        return self

    def __deepcopy__(self, memo: dict) -> KxPrivateKey:
        return self
