"""The node's passphrase-protected keystore: device signing key, X25519 key, rotation state.

File format (JSON, UTF-8, mode 0600), version 1::

    {
      "format": "aimarket-node-keystore",
      "version": 1,
      "kdf": {"alg": "argon2id13", "opslimit": 3, "memlimit": 268435456, "salt": "<b64>"},
      "cipher": {"alg": "xsalsa20poly1305", "nonce": "<b64>", "ciphertext": "<b64>"},
      "public": {"signing_key": "z6Mk…", "kx_key": "z6LS…", "previous_signing_key": null,
                 "rotated_at": null, "device_id": "…", "hub_url": "…", "created_at": "…"}
    }

* The 32-byte SecretBox key is Argon2id (``nacl.pwhash.argon2id.kdf``) of the passphrase
  (a ``str`` is NFC-normalised, then UTF-8) with a random 16-byte salt; the parameters are
  stored so they can be raised later without breaking old files. Every :func:`save` draws a
  new salt and nonce.
* The ciphertext (``nacl.secret.SecretBox``, XSalsa20-Poly1305) holds the secrets *and* the
  metadata. ``public`` is a clear copy of the non-secret parts, readable without the
  passphrase (:func:`read_public`, for ``aim-node status``); :func:`load` checks it equals
  the decrypted copy, so editing it is detected.
* Writes are atomic: a temp file in the same directory (created 0600), ``fsync``, then
  ``rename`` (``link`` for :func:`create` so an existing keystore is never clobbered), then
  ``fsync`` of the directory.
* :func:`load` **refuses** (``KeystoreInsecure``) a file that is group- or world-accessible
  (any of mode bits 0077) on POSIX: a readable keystore is an offline brute-force target, and
  warning-only checks are ignored in practice. Fix with ``chmod 600``.
* KDF limits: secure defaults are libsodium's "moderate" profile (3 passes, 256 MiB, about
  a second on a small node, done once at start-up). Tests use ``TEST_OPS_LIMIT`` /
  ``TEST_MEM_LIMIT``. On load, parameters above ``MAX_OPS_LIMIT`` / ``MAX_MEM_LIMIT`` are
  refused so a tampered file cannot exhaust memory.

Python cannot wipe ``bytes``; secrets live in libsodium-backed key objects and short-lived
buffers, and never in ``repr``/``str`` or logs.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash
import nacl.secret
from nacl.pwhash import argon2id

from domain.model.errors import AlreadyExists, InvalidInput, MarketError
from domain.model.jcs import canonical_json
from domain.model.keys import KxPrivateKey, SigningKey

FORMAT = "aimarket-node-keystore"
VERSION = 1
KDF_ALG = "argon2id13"
CIPHER_ALG = "xsalsa20poly1305"

DEFAULT_OPS_LIMIT: int = argon2id.OPSLIMIT_MODERATE
DEFAULT_MEM_LIMIT: int = argon2id.MEMLIMIT_MODERATE
TEST_OPS_LIMIT: int = argon2id.OPSLIMIT_MIN
TEST_MEM_LIMIT: int = argon2id.MEMLIMIT_MIN
MAX_OPS_LIMIT = 32
MAX_MEM_LIMIT = 2 * 1024**3
MAX_FILE_BYTES = 64 * 1024


class KeystoreLocked(MarketError):
    """Raised when the keystore cannot be opened: wrong passphrase or corrupted file."""

    code = "keystore_locked"
    status = 401
    title = "wrong passphrase or corrupted keystore"


class KeystoreCorrupt(KeystoreLocked):
    """Raised when the keystore file is structurally broken (not just a wrong passphrase)."""

    code = "keystore_corrupt"
    title = "corrupted keystore"


class KeystoreMissing(MarketError):
    """Raised when there is no keystore at the path."""

    code = "keystore_missing"
    status = 404
    title = "no keystore found; run `aim-node init` first"


class KeystoreExists(AlreadyExists):
    """Raised by :func:`create` when a keystore already exists and ``overwrite`` is False."""

    code = "keystore_exists"
    title = "a keystore already exists"


class KeystoreInsecure(MarketError):
    """Raised when the keystore file is readable or writable by group or others."""

    code = "keystore_insecure"
    status = 403
    title = "keystore file permissions are too open"


@dataclass(frozen=True)
class Keystore:
    """The node's keys and plain metadata, decrypted in memory.

    Attributes:
        signing_key: the current Ed25519 device key.
        kx_key: the X25519 key-agreement key (independent of the signing key).
        previous_signing_key: the key replaced by the last rotation, kept for the grace period.
        rotated_at: when that rotation happened (ISO 8601 UTC), or None.
        device_id: the hub's id for this device once enrolled, or None.
        hub_url: the hub this node is enrolled with, or None.
        created_at: when the keystore was created (ISO 8601 UTC).
    """

    signing_key: SigningKey = field(repr=False)
    kx_key: KxPrivateKey = field(repr=False)
    previous_signing_key: SigningKey | None = field(default=None, repr=False)
    rotated_at: str | None = None
    device_id: str | None = None
    hub_url: str | None = None
    created_at: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.signing_key, SigningKey):
            raise InvalidInput("signing_key must be a SigningKey")
        if not isinstance(self.kx_key, KxPrivateKey):
            raise InvalidInput("kx_key must be a KxPrivateKey")
        if self.previous_signing_key is not None and not isinstance(self.previous_signing_key, SigningKey):
            raise InvalidInput("previous_signing_key must be a SigningKey or None")
        for name in ("rotated_at", "device_id", "hub_url"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"{name} must be a string or None")
        if not isinstance(self.created_at, str):
            raise InvalidInput("created_at must be a string")

    def rotated(self, new_signing_key: SigningKey, *, rotated_at: str) -> Keystore:
        """Return a keystore whose current key is ``new_signing_key`` and previous key is ours.

        The caller signs the new key with the old one for the hub, then :func:`save`s this.
        """
        if new_signing_key == self.signing_key:
            raise InvalidInput("the new signing key equals the current one")
        return Keystore(
            signing_key=new_signing_key,
            kx_key=self.kx_key,
            previous_signing_key=self.signing_key,
            rotated_at=rotated_at,
            device_id=self.device_id,
            hub_url=self.hub_url,
            created_at=self.created_at,
        )

    def with_enrollment(self, *, device_id: str, hub_url: str) -> Keystore:
        """Return a copy recording the hub enrollment."""
        return Keystore(
            signing_key=self.signing_key,
            kx_key=self.kx_key,
            previous_signing_key=self.previous_signing_key,
            rotated_at=self.rotated_at,
            device_id=device_id,
            hub_url=hub_url,
            created_at=self.created_at,
        )

    def public_info(self) -> dict[str, Any]:
        """The non-secret view (public keys as multibase, metadata), as stored in clear."""
        previous = self.previous_signing_key
        return {
            "signing_key": self.signing_key.verify_key.to_multibase(),
            "kx_key": self.kx_key.public_key.to_multibase(),
            "previous_signing_key": previous.verify_key.to_multibase() if previous else None,
            "rotated_at": self.rotated_at,
            "device_id": self.device_id,
            "hub_url": self.hub_url,
            "created_at": self.created_at,
        }

    def __repr__(self) -> str:
        return (
            f"Keystore(signing_key={self.signing_key.verify_key.key_id!r}, "
            f"kx_key={self.kx_key.public_key.key_id!r}, "
            f"previous_signing_key={self.previous_signing_key.key_id if self.previous_signing_key else None!r}, "
            f"device_id={self.device_id!r}, hub_url={self.hub_url!r}, created_at={self.created_at!r})"
        )

    __str__ = __repr__


# ---------------------------------------------------------------------------------------------
# helpers


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise KeystoreCorrupt(f"corrupted keystore: {what} is missing")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise KeystoreCorrupt(f"corrupted keystore: {what} is not base64") from exc
    if length is not None and len(raw) != length:
        raise KeystoreCorrupt(f"corrupted keystore: {what} has the wrong length")
    return raw


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    if isinstance(passphrase, str):
        data = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    elif isinstance(passphrase, (bytes, bytearray)):
        data = bytes(passphrase)
    else:
        raise InvalidInput("passphrase must be a string")
    if not data:
        raise InvalidInput("passphrase must not be empty")
    return data


def _check_limits(ops_limit: object, mem_limit: object, *, loading: bool) -> None:
    bad = InvalidInput if not loading else KeystoreCorrupt
    if type(ops_limit) is not int or type(mem_limit) is not int:
        raise bad("Argon2id limits must be integers")
    if ops_limit < argon2id.OPSLIMIT_MIN or mem_limit < argon2id.MEMLIMIT_MIN:
        raise bad(f"Argon2id limits below the minimum (ops >= {argon2id.OPSLIMIT_MIN}, mem >= {argon2id.MEMLIMIT_MIN})")
    if ops_limit > MAX_OPS_LIMIT or mem_limit > MAX_MEM_LIMIT:
        raise bad(f"Argon2id limits above the maximum (ops <= {MAX_OPS_LIMIT}, mem <= {MAX_MEM_LIMIT})")


def _derive_key(passphrase: bytes, salt: bytes, ops_limit: int, mem_limit: int) -> bytes:
    return argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=ops_limit, memlimit=mem_limit)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, *, exclusive: bool) -> None:
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask cannot widen it, but be explicit
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise KeystoreExists(f"a keystore already exists at {path}") from exc
            except OSError:
                # No hard links on this filesystem: fall back to check-then-rename.
                if os.path.lexists(path):
                    raise KeystoreExists(f"a keystore already exists at {path}") from None
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _read_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise KeystoreMissing(f"no keystore at {path}; run `aim-node init` first") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeystoreCorrupt(f"corrupted keystore: {path} is not a regular file")
        if os.name == "posix" and info.st_mode & 0o077:
            raise KeystoreInsecure(
                f"keystore {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                f"it must not be accessible by group or others (run: chmod 600 {path})"
            )
        if info.st_size > MAX_FILE_BYTES:
            raise KeystoreCorrupt("corrupted keystore: file is too large")
        chunks = []
        while chunk := os.read(fd, MAX_FILE_BYTES + 1):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _parse_envelope(data: bytes) -> dict[str, Any]:
    try:
        envelope = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise KeystoreCorrupt("corrupted keystore: not JSON") from exc
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise KeystoreCorrupt("corrupted keystore: not an aimarket node keystore")
    if envelope.get("version") != VERSION:
        raise KeystoreCorrupt(f"unsupported keystore version {envelope.get('version')!r}; expected {VERSION}")
    for section in ("kdf", "cipher", "public"):
        if not isinstance(envelope.get(section), dict):
            raise KeystoreCorrupt(f"corrupted keystore: {section} section missing")
    if envelope["kdf"].get("alg") != KDF_ALG or envelope["cipher"].get("alg") != CIPHER_ALG:
        raise KeystoreCorrupt("corrupted keystore: unsupported algorithms")
    return envelope


def _optional_text(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise KeystoreCorrupt(f"corrupted keystore: {name} is not a string")
    return value


# ---------------------------------------------------------------------------------------------
# public API


def save(
    keystore: Keystore,
    path: str | os.PathLike[str],
    passphrase: str | bytes,
    *,
    ops_limit: int = DEFAULT_OPS_LIMIT,
    mem_limit: int = DEFAULT_MEM_LIMIT,
    _exclusive: bool = False,
) -> None:
    """Encrypt ``keystore`` under ``passphrase`` and write it atomically to ``path`` (mode 0600).

    Raises:
        InvalidInput: empty passphrase or Argon2id limits out of range.
    """
    if not isinstance(keystore, Keystore):
        raise InvalidInput("keystore must be a Keystore")
    _check_limits(ops_limit, mem_limit, loading=False)
    secret = _passphrase_bytes(passphrase)
    previous = keystore.previous_signing_key
    plaintext = canonical_json(
        {
            "signing_seed": _b64(keystore.signing_key.export_seed()),
            "kx_private": _b64(keystore.kx_key.export_bytes()),
            "previous_signing_seed": _b64(previous.export_seed()) if previous else None,
            "rotated_at": keystore.rotated_at,
            "device_id": keystore.device_id,
            "hub_url": keystore.hub_url,
            "created_at": keystore.created_at,
        }
    )
    salt = secrets.token_bytes(argon2id.SALTBYTES)
    nonce = secrets.token_bytes(nacl.secret.SecretBox.NONCE_SIZE)
    box = nacl.secret.SecretBox(_derive_key(secret, salt, ops_limit, mem_limit))
    ciphertext = box.encrypt(plaintext, nonce).ciphertext
    envelope = {
        "format": FORMAT,
        "version": VERSION,
        "kdf": {"alg": KDF_ALG, "opslimit": ops_limit, "memlimit": mem_limit, "salt": _b64(salt)},
        "cipher": {"alg": CIPHER_ALG, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)},
        "public": keystore.public_info(),
    }
    data = (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode("utf-8")
    _atomic_write(Path(path), data, exclusive=_exclusive)


def create(
    path: str | os.PathLike[str],
    passphrase: str | bytes,
    *,
    device_id: str | None = None,
    hub_url: str | None = None,
    created_at: str | None = None,
    overwrite: bool = False,
    ops_limit: int = DEFAULT_OPS_LIMIT,
    mem_limit: int = DEFAULT_MEM_LIMIT,
    signing_key: SigningKey | None = None,
    kx_key: KxPrivateKey | None = None,
) -> Keystore:
    """Generate fresh device keys (unless given), save them encrypted at ``path`` and return them.

    Args:
        path: keystore file; its directory is created with mode 0700 if missing.
        passphrase: non-empty passphrase.
        device_id, hub_url: metadata, usually filled in after enrollment.
        created_at: ISO 8601 UTC time; defaults to now.
        overwrite: replace an existing keystore (its keys are lost).
        ops_limit, mem_limit: Argon2id cost; use ``TEST_OPS_LIMIT``/``TEST_MEM_LIMIT`` in tests.
        signing_key, kx_key: supply keys instead of generating them (tests, migration).

    Raises:
        KeystoreExists: a file exists at ``path`` and ``overwrite`` is False.
        InvalidInput: empty passphrase or limits out of range.
    """
    target = Path(path)
    if not overwrite and os.path.lexists(target):
        raise KeystoreExists(f"a keystore already exists at {target}; pass overwrite=True to replace it")
    if created_at is None:
        created_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    keystore = Keystore(
        signing_key=signing_key if signing_key is not None else SigningKey.generate(),
        kx_key=kx_key if kx_key is not None else KxPrivateKey.generate(),
        device_id=device_id,
        hub_url=hub_url,
        created_at=created_at,
    )
    save(keystore, target, passphrase, ops_limit=ops_limit, mem_limit=mem_limit, _exclusive=not overwrite)
    return keystore


def load(path: str | os.PathLike[str], passphrase: str | bytes) -> Keystore:
    """Decrypt the keystore at ``path``.

    Raises:
        KeystoreMissing: no file at ``path``.
        KeystoreInsecure: the file is accessible by group or others.
        KeystoreLocked: wrong passphrase (or ciphertext altered).
        KeystoreCorrupt: the file is not a valid keystore (a ``KeystoreLocked`` subclass).
        InvalidInput: empty passphrase.
    """
    target = Path(path)
    secret = _passphrase_bytes(passphrase)
    envelope = _parse_envelope(_read_file(target))
    kdf, cipher = envelope["kdf"], envelope["cipher"]
    _check_limits(kdf.get("opslimit"), kdf.get("memlimit"), loading=True)
    salt = _unb64(kdf.get("salt"), "kdf.salt", argon2id.SALTBYTES)
    nonce = _unb64(cipher.get("nonce"), "cipher.nonce", nacl.secret.SecretBox.NONCE_SIZE)
    ciphertext = _unb64(cipher.get("ciphertext"), "cipher.ciphertext")
    box = nacl.secret.SecretBox(_derive_key(secret, salt, kdf["opslimit"], kdf["memlimit"]))
    try:
        plaintext = box.decrypt(ciphertext, nonce)
    except nacl.exceptions.CryptoError as exc:
        raise KeystoreLocked("wrong passphrase or corrupted keystore") from exc
    try:
        payload = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise KeystoreCorrupt("corrupted keystore: contents are not JSON") from exc
    if not isinstance(payload, dict):
        raise KeystoreCorrupt("corrupted keystore: contents are not an object")
    previous_seed = payload.get("previous_signing_seed")
    try:
        keystore = Keystore(
            signing_key=SigningKey.from_seed(_unb64(payload.get("signing_seed"), "signing_seed", 32)),
            kx_key=KxPrivateKey.from_bytes(_unb64(payload.get("kx_private"), "kx_private", 32)),
            previous_signing_key=(
                SigningKey.from_seed(_unb64(previous_seed, "previous_signing_seed", 32))
                if previous_seed is not None
                else None
            ),
            rotated_at=_optional_text(payload, "rotated_at"),
            device_id=_optional_text(payload, "device_id"),
            hub_url=_optional_text(payload, "hub_url"),
            created_at=_optional_text(payload, "created_at") or "",
        )
    except InvalidInput as exc:
        raise KeystoreCorrupt(f"corrupted keystore: {exc.detail}") from exc
    if envelope["public"] != keystore.public_info():
        raise KeystoreCorrupt("corrupted keystore: the clear public section was altered")
    return keystore


def read_public(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the clear, non-secret ``public`` section without the passphrase.

    It is not authenticated until :func:`load` succeeds; use it for display only.

    Raises:
        KeystoreMissing, KeystoreInsecure, KeystoreCorrupt: as for :func:`load`.
    """
    return dict(_parse_envelope(_read_file(Path(path)))["public"])
