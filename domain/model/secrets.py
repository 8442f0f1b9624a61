"""Keys derived from the one platform secret (HKDF-SHA256), and the ciphers built on them.

* API keys and OAuth client secrets: Fernet under HKDF(secret, "credentials").
* TOTP secrets: AES-256-GCM under HKDF(secret, "totp"), with the account id as associated
  data so a ciphertext cannot be moved to another account.
* Session JWTs: HMAC key HKDF(secret, "session:<kid>") per key id.
* Platform Ed25519 signing and X25519 key-exchange keys: seeds HKDF(secret, "<purpose>:<kid>").

Every host with the same secret derives the same keys; nothing secret is stored in events.
"""

from __future__ import annotations

import base64
import hmac

import nacl.utils
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from domain.model.errors import InvalidCredentials

SECRET_BYTES_MIN = 32


class PlatformSecrets:
    """Derives purpose-bound keys from the platform secret. Holds no other state."""

    def __init__(self, master: bytes) -> None:
        if len(master) < SECRET_BYTES_MIN:
            raise ValueError("the platform secret must be at least 32 bytes")
        self._master = master
        self._fernet = Fernet(base64.urlsafe_b64encode(self.derive("credentials")))
        self._totp = AESGCM(self.derive("totp"))

    def __repr__(self) -> str:
        return "PlatformSecrets(<redacted>)"

    def derive(self, info: str, length: int = 32) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=b"aimarket-v1", info=info.encode()).derive(
            self._master
        )

    # -- credentials -------------------------------------------------------------------
    def encrypt_credential(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def check_credential(self, ciphertext: str, presented: str) -> None:
        """Raise InvalidCredentials unless ``presented`` equals the encrypted secret."""
        try:
            stored = self._fernet.decrypt(ciphertext.encode())
        except InvalidToken:
            raise InvalidCredentials("credential cannot be verified") from None
        if not hmac.compare_digest(stored, presented.encode()):
            raise InvalidCredentials("invalid credential")

    # -- TOTP ----------------------------------------------------------------------------
    def encrypt_totp(self, secret: str, account_id: str) -> str:
        nonce = nacl.utils.random(12)
        sealed = self._totp.encrypt(nonce, secret.encode(), account_id.encode())
        return base64.b64encode(nonce + sealed).decode()

    def decrypt_totp(self, ciphertext: str, account_id: str) -> str:
        raw = base64.b64decode(ciphertext)
        return self._totp.decrypt(raw[:12], raw[12:], account_id.encode()).decode()

    # -- platform keys ---------------------------------------------------------------------
    def session_key(self, kid: str) -> bytes:
        return self.derive(f"session:{kid}")

    def signing_key(self, kid: str) -> SigningKey:
        return SigningKey(self.derive(f"signing:{kid}"))

    def kx_key(self, kid: str) -> PrivateKey:
        return PrivateKey(self.derive(f"kx:{kid}"))
