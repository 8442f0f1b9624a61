"""Canonical JSON (RFC 8785 JCS) and SRI digests: the only serialisation that is ever signed.

Everything the marketplace signs or hashes (credentials, receipts, manifests, checkpoints)
goes through :func:`canonical_json`. Peers that used "sorted keys + compact separators"
instead of JCS broke each other on number and string escaping; JCS fixes both.

Numbers follow RFC 8785 exactly: any finite IEEE-754 double is serialised the ECMAScript way
(``1e+30``, ``4.5``, ``0.002``) and integers must lie inside the I-JSON safe range
(``|n| <= 2**53 - 1``), because a verifier in another language parses numbers as doubles and
would silently change a bigger one. NaN and ±Infinity are refused. Protocol objects should
not carry floats at all: amounts are integer minor units or decimal *strings*
(``"12.50"``), ratios are basis points. :func:`canonical_json` accepts floats only so it can
canonicalise foreign documents and the RFC's own vectors; pass ``allow_floats=False`` where a
float can only be a bug.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import rfc8785

from domain.model.errors import InvalidInput

MAX_SAFE_INTEGER = 2**53 - 1


def _reject_floats(obj: Any) -> None:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            raise InvalidInput("floats are not allowed in protocol objects; use integers or decimal strings")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def canonical_json(obj: Any, *, allow_floats: bool = True) -> bytes:
    """Serialise ``obj`` with the RFC 8785 JSON Canonicalization Scheme.

    Args:
        obj: JSON data model only: ``dict`` with ``str`` keys, ``list``/``tuple``, ``str``,
            ``int`` (within ±(2**53 - 1)), finite ``float``, ``bool`` and ``None``.
        allow_floats: when False, any float anywhere in ``obj`` is refused (use it for
            our own protocol objects, which never legitimately contain one).

    Returns:
        The canonical UTF-8 bytes.

    Raises:
        InvalidInput: for values outside the JSON/I-JSON data model (NaN, Infinity, unsafe
            integers, non-string keys, lone surrogates, bytes and other Python types).
    """
    if not allow_floats:
        _reject_floats(obj)
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:
        raise InvalidInput(f"value cannot be canonicalised (RFC 8785): {exc}") from exc
    except RecursionError as exc:
        raise InvalidInput("value is nested too deeply to canonicalise") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidInput(f"duplicate JSON member name {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not valid JSON")


def loads_strict(data: bytes | str) -> Any:
    """Parse JSON that is going to be verified: duplicate member names and NaN/Infinity refused.

    Duplicate names are the classic way to make a signer and a verifier see different
    documents (RFC 8785 §3.1 / I-JSON forbid them), so signed input must be parsed with this.

    Raises:
        InvalidInput: if ``data`` is not UTF-8 JSON or breaks the rules above.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except InvalidInput:
        raise
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from exc


def sha256_sri(data: bytes) -> str:
    """Return the Subresource-Integrity style digest ``"sha256-" + base64(SHA-256(data))``.

    Standard base64 with padding, as in the W3C SRI spec and the VC ``digestSRI`` property.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput("sha256_sri takes bytes")
    return "sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
