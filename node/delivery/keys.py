"""The buyer's per-purchase Ed25519 key, kept as a private OKP JWK (RFC 8037) in a 0600 file.

``{"kty": "OKP", "crv": "Ed25519", "x": <public, base64url>, "d": <seed, base64url>}``. Its
RFC 7638 thumbprint (``jkt``) is what the buyer gives the hub when buying; the hub puts it in
the delivery token's ``cnf``. One key per purchase: it proves nothing but that purchase.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from domain.model.errors import InvalidInput
from domain.model.keys import SigningKey, b64url, b64url_decode


def save_buyer_key(key: SigningKey, path: str | Path) -> None:
    """Write ``key`` as a private JWK, mode 0600, refusing to replace an existing file."""
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(key.verify_key.to_bytes()), "d": b64url(key.export_seed())}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(jwk, handle)
        handle.write("\n")


def load_buyer_key(path: str | Path) -> SigningKey:
    """Read a private Ed25519 JWK; a file group or others can read is refused."""
    info = os.stat(path)
    if os.name == "posix" and stat.S_IMODE(info.st_mode) & 0o077:
        raise InvalidInput(f"{path} is readable by others; chmod 600 it")
    jwk = json.loads(Path(path).read_text())
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "d" not in jwk:
        raise InvalidInput("expected a private Ed25519 OKP JWK")
    key = SigningKey.from_seed(b64url_decode(jwk["d"]))
    if "x" in jwk and b64url_decode(jwk["x"]) != key.verify_key.to_bytes():
        raise InvalidInput("the JWK's x does not match its d")
    return key
