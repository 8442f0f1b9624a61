"""``aimarket audit check-credential`` / ``sign-credential``: any W3C VC file, the three suites.

The files and the key are read here (the pure model does no I/O); verification and signing are
``domain.model.vc`` and ``domain.model.vc_sets``. Contexts are the bundled ones plus any
``--context URL=FILE`` given; nothing is fetched.

Key file (``--key-file``), one of:

* a private Ed25519 OKP JWK (RFC 8037), the form ``aim-node purchase-key`` writes:
  ``{"kty": "OKP", "crv": "Ed25519", "d": <seed, base64url>, "x": <public, base64url>}``;
* a JSON object with ``secretKeyMultibase`` (and optionally ``publicKeyMultibase``), the form
  of the W3C test vectors' ``keyPair.json``;
* a text file holding only the multibase secret key ``z3u2…`` (multicodec ed25519-priv).

The file must not be readable by group or others (``chmod 600``).
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from domain.model.errors import InvalidInput, MarketError, UnsupportedCryptosuite
from domain.model.keys import DID_KEY_PREFIX, SigningKey, VerifyKey, b64url_decode
from domain.model.vc import (
    DATA_INTEGRITY_PROOF,
    ED25519_SIGNATURE_2020,
    SUITES,
    VerifiedProof,
    issuer_id,
    sign_credential,
    verify_credential,
    xsd_datetime,
)
from domain.model.vc_sets import add_proof, verify_proof_set

MAX_FILE_BYTES = 1024 * 1024


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInput(f"the {what} {path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def _refuse_constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not JSON")


def read_json(path: str, what: str = "credential") -> Any:
    """Parse a JSON file (at most 1 MiB; NaN and Infinity refused)."""
    try:
        return json.loads(_read(path, what).decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, MarketError):
            raise
        raise InvalidInput(f"the {what} {path} is not JSON: {exc}") from None


def read_contexts(pairs: list[str] | None) -> dict[str, Any]:
    """``URL=FILE`` pairs -> {URL: the JSON-LD context document in FILE}."""
    contexts: dict[str, Any] = {}
    for pair in pairs or []:
        url, sep, path = pair.partition("=")
        if not sep or not url or not path:
            raise InvalidInput(f"--context takes URL=FILE, not {pair!r}")
        document = read_json(path, "context")
        if not isinstance(document, dict) or "@context" not in document:
            raise InvalidInput(f"the context file {path} holds no JSON-LD context document (no @context)")
        contexts[url] = document
    return contexts


def load_signing_key(path: str) -> SigningKey:
    """Read an Ed25519 private key file (the forms in the module docstring)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InvalidInput(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
        raise InvalidInput(f"the key file {path} is readable by others; chmod 600 it")
    text = _read(path, "key file").decode("utf-8", "replace").strip()
    if text.startswith("z") and "\n" not in text:
        return SigningKey.from_multibase(text)
    document = read_json(path, "key file")
    if isinstance(document, dict) and isinstance(document.get("secretKeyMultibase"), str):
        key = SigningKey.from_multibase(document["secretKeyMultibase"])
        public = document.get("publicKeyMultibase")
        if public is not None and VerifyKey.from_multibase(public) != key.verify_key:
            raise InvalidInput("publicKeyMultibase is not the secret key's public key")
        return key
    if isinstance(document, dict) and document.get("kty") == "OKP" and document.get("crv") == "Ed25519" \
            and isinstance(document.get("d"), str):
        key = SigningKey.from_seed(b64url_decode(document["d"]))
        if "x" in document and b64url_decode(str(document["x"])) != key.verify_key.to_bytes():
            raise InvalidInput("the JWK's x does not match its d")
        return key
    raise InvalidInput(f"{path} is no Ed25519 private key: expected an OKP JWK, a keyPair with secretKeyMultibase "
                       "or a z3u2… multibase secret key")


def parse_public_key(text: str) -> VerifyKey:
    """``--key``: a ``z6Mk…`` multibase Ed25519 public key or a ``did:key``."""
    return VerifyKey.from_did_key(text) if text.startswith(DID_KEY_PREFIX) else VerifyKey.from_multibase(text)


def suite_options(suite: str) -> dict[str, Any]:
    """The ``proof_type`` / ``cryptosuite`` arguments for a suite name."""
    if suite == ED25519_SIGNATURE_2020:
        return {"proof_type": ED25519_SIGNATURE_2020, "cryptosuite": None}
    if suite in SUITES:
        return {"proof_type": DATA_INTEGRITY_PROOF, "cryptosuite": suite}
    raise UnsupportedCryptosuite(f"unsupported suite {suite!r}; use one of {', '.join(SUITES)}")


def _describe(document: Any) -> str:
    """``suite X, issuer Y`` as far as the file says, for a refusal line."""
    if not isinstance(document, dict):
        return "not a JSON object"
    proofs = document.get("proof")
    proofs = proofs if isinstance(proofs, list) else [proofs]
    suites = sorted({str(p.get("cryptosuite") or p.get("type")) for p in proofs if isinstance(p, dict)})
    return f"suite {'+'.join(suites) or 'none'}, issuer {issuer_id(document) or 'none'}"


def check(path: str, *, key: str | None, contexts: list[str] | None, proof_purpose: str,
          any_issuer: bool) -> tuple[bool, list[str]]:
    """Verify the credential in ``path``: (verified, lines to print). A refusal is one line."""
    document: Any = None
    try:
        document = read_json(path)
        extra = read_contexts(contexts)
        expected = parse_public_key(key) if key else None
        if isinstance(document, dict) and isinstance(document.get("proof"), list):
            methods = {p.get("verificationMethod") for p in document["proof"] if isinstance(p, dict)}
            keys = {vm: expected for vm in methods if isinstance(vm, str) and expected is not None
                    and not vm.startswith(DID_KEY_PREFIX)}
            results = verify_proof_set(document, keys=keys, expected_proof_purpose=proof_purpose, contexts=extra,
                                       bind_issuer=not any_issuer)
        else:
            results = [verify_credential(document, expected_key=expected, expected_proof_purpose=proof_purpose,
                                         contexts=extra, bind_issuer=not any_issuer)]
    except MarketError as exc:
        return False, [f"error [{exc.code}]: {exc.detail} ({_describe(document)})"]
    return True, _report(document, results)


def _report(document: dict[str, Any], results: list[VerifiedProof]) -> list[str]:
    lines = [f"issuer: {issuer_id(document) or '(none)'}"]
    for index, result in enumerate(results):
        prefix = f"proof {index + 1}: " if len(results) > 1 else ""
        created = xsd_datetime(result.created) if result.created is not None else "(none)"
        lines.append(f"{prefix}suite: {result.suite}; key: {result.verify_key.to_multibase()}; "
                     f"verification method: {result.verification_method}; created: {created}")
    lines.append("result: verified")
    return lines


def sign(path: str, *, key_file: str, suite: str, created: str | None, verification_method: str | None,
         proof_purpose: str, nonce: str | None, contexts: list[str] | None, proof_id: str | None,
         previous_proof: list[str] | None) -> dict[str, Any]:
    """The credential in ``path`` with one more proof (a proof set when it already has one)."""
    document = read_json(path)
    options = suite_options(suite)
    key = load_signing_key(key_file)
    extra = read_contexts(contexts)
    moment = created or xsd_datetime(datetime.now(UTC).replace(microsecond=0))
    previous: str | list[str] | None = previous_proof[0] if previous_proof and len(previous_proof) == 1 \
        else previous_proof or None
    common = {"created": moment, "nonce": nonce, "verification_method": verification_method,
              "proof_purpose": proof_purpose, "contexts": extra, **options}
    if isinstance(document, dict) and ("proof" in document or proof_id or previous):
        return add_proof(document, key, proof_id=proof_id, previous_proof=previous, **common)
    return sign_credential(document, key, **common)


def write_json(document: dict[str, Any], out: str | None) -> None:
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        print(text, end="")
        return
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {out}: {exc.strerror or exc}") from None
