"""Signed tree heads: RFC 9162's {timestamp, tree size, root hash}, written as a C2SP checkpoint
in signed-note form and signed with the platform's Ed25519 key.

A head is the text (every line ends with a newline)::

    hub.example.com/audit                  origin: who the log is
    1234                                   tree size, decimal
    0b1e…Q=                                root hash, standard base64
    timestamp 1733100000123                extension line: milliseconds since the epoch

followed by a blank line and one signature line per signer::

    — hub.example.com/audit <base64(key hash (4 bytes) || Ed25519 signature (64 bytes))>

The signature is over the text above the blank line (C2SP signed-note); the key hash is the
first 4 bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``, so a verifier holding several
keys (after a rotation) knows which one to try. The note is the source of truth: a JSON form
(:meth:`SignedTreeHead.as_dict`) carries it beside the parsed fields for convenience, and
readers re-parse the note (:func:`head_from_dict`) rather than trust the fields.

Pure: no clock (the timestamp comes in), no I/O. Errors are :class:`TreeHeadInvalid`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from domain.model.errors import InvalidInput, SignatureInvalid, TreeHeadInvalid
from domain.model.keys import SigningKey, VerifyKey
from domain.model.merkle import HASH_BYTES

SIGNATURE_DASH = "\u2014 "  # an em dash and a space open every signature line
ED25519_ALGORITHM = b"\x01"
NOTE_BYTES_MAX = 4096
SIGNATURES_MAX = 100  # as the reference implementation (golang.org/x/mod/sumdb/note)
ORIGIN_CHARS_MAX = 200
SIZE_MAX = 2**63 - 1
TIMESTAMP_MS_MAX = 2**53 - 1  # an I-JSON safe integer: every verifier parses it exactly
_ORIGIN_RE = re.compile(r"^[\x21-\x2a\x2c-\x7e]{1,200}$")  # printable ASCII, no space, no '+'
_NAME_RE = re.compile(r"^[^\s+]{1,200}$")
_DECIMAL_RE = re.compile(r"^(0|[1-9][0-9]{0,18})$")
_TIMESTAMP_RE = re.compile(r"^timestamp (0|[1-9][0-9]{0,15})$")


@dataclass(frozen=True, slots=True)
class TreeHead:
    """What a head states: the log ``origin`` had ``tree_size`` entries with ``root_hash`` at
    ``timestamp_ms``."""

    origin: str
    tree_size: int
    root_hash: bytes
    timestamp_ms: int

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not _ORIGIN_RE.fullmatch(self.origin):
            raise TreeHeadInvalid("the origin must be 1-200 printable ASCII characters without space or '+'")
        if not isinstance(self.tree_size, int) or isinstance(self.tree_size, bool) or not 0 <= self.tree_size <= SIZE_MAX:
            raise TreeHeadInvalid("the tree size must be an integer from 0 to 2**63 - 1")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_BYTES:
            raise TreeHeadInvalid(f"the root hash must be {HASH_BYTES} bytes")
        ts = self.timestamp_ms
        if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= TIMESTAMP_MS_MAX:
            raise TreeHeadInvalid("the timestamp must be milliseconds from 0 to 2**53 - 1")

    def text(self) -> str:
        """The checkpoint body the signatures cover."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        return f"{self.origin}\n{self.tree_size}\n{root}\ntimestamp {self.timestamp_ms}\n"


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    """A head with its signed note; ``kid`` names the platform key that signed (e.g. ``signing-2``)."""

    head: TreeHead
    note: str
    kid: str

    def as_dict(self) -> dict[str, Any]:
        h = self.head
        return {"origin": h.origin, "tree_size": h.tree_size, "root_hash": base64.b64encode(h.root_hash).decode(),
                "timestamp_ms": h.timestamp_ms, "kid": self.kid, "note": self.note}


def key_hash(name: str, key: VerifyKey) -> bytes:
    """The 4-byte signed-note key id: ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519_ALGORITHM + key.to_bytes()).digest()[:4]


def verifier_key(name: str, key: VerifyKey) -> str:
    """The C2SP verifier key text ``name+<key hash hex>+<base64(0x01 || public key)>``."""
    encoded = base64.b64encode(ED25519_ALGORITHM + key.to_bytes()).decode("ascii")
    return f"{name}+{key_hash(name, key).hex()}+{encoded}"


def sign_note(text: str, name: str, signing_key: SigningKey) -> str:
    """A signed note: ``text`` (ending in a newline), a blank line, one signature line by ``name``."""
    _check_text(text)
    signature = signing_key.sign(text.encode("utf-8"))
    blob = base64.b64encode(key_hash(name, signing_key.verify_key) + signature).decode("ascii")
    return f"{text}\n{SIGNATURE_DASH}{name} {blob}\n"


def open_note(note: str, name: str, keys: Sequence[VerifyKey]) -> tuple[str, VerifyKey]:
    """The text of ``note`` once a signature by ``name`` under one of ``keys`` verifies.

    Signatures by other names or unknown keys are skipped (a note may carry cosignatures);
    one that names a given key but does not verify is an error. Returns the text and the key.

    Raises:
        TreeHeadInvalid: a malformed note, a bad signature, or no signature by a given key.
    """
    text, signatures = split_note(note)
    for signer, hashed, signature in signatures:
        if signer != name:
            continue
        for key in keys:
            if key_hash(name, key) != hashed:
                continue
            try:
                key.verify(text.encode("utf-8"), signature)
            except (SignatureInvalid, InvalidInput):
                raise TreeHeadInvalid(f"the signature by {name} does not verify") from None
            return text, key
    raise TreeHeadInvalid(f"the note carries no signature by {name} under any of the keys given")


def split_note(note: str) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """A signed note's text and its (name, key hash, signature) lines; the form only, nothing verified."""
    if not isinstance(note, str) or len(note.encode("utf-8", "surrogatepass")) > NOTE_BYTES_MAX:
        raise TreeHeadInvalid(f"a signed note is a text of at most {NOTE_BYTES_MAX} bytes")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise TreeHeadInvalid("a signed note is its text, a blank line, then signature lines ending in a newline")
    text, lines = note[:cut + 1], note[cut + 2:-1].split("\n")
    _check_text(text)
    if len(lines) > SIGNATURES_MAX:
        raise TreeHeadInvalid(f"a signed note carries at most {SIGNATURES_MAX} signatures")
    found = []
    for line in lines:
        if not line.startswith(SIGNATURE_DASH):
            raise TreeHeadInvalid("a signature line starts with an em dash and a space")
        name, space, blob = line[len(SIGNATURE_DASH):].partition(" ")
        if not space or not _NAME_RE.fullmatch(name) or " " in blob:
            raise TreeHeadInvalid("a signature line is '\u2014 <name> <base64>' with a name without space or '+'")
        raw = _b64(blob, 4 + 64, "signature")
        found.append((name, raw[:4], raw[4:]))
    return text, found


def sign_head(head: TreeHead, signing_key: SigningKey, kid: str) -> SignedTreeHead:
    """Sign ``head`` as a checkpoint; the key name is the head's origin."""
    return SignedTreeHead(head=head, note=sign_note(head.text(), head.origin, signing_key), kid=kid)


def parse_checkpoint(text: str) -> TreeHead:
    """The head a checkpoint text states (origin, size, root hash, timestamp line), canonical form only."""
    lines = text.split("\n")
    if len(lines) != 5 or lines[4] != "":
        raise TreeHeadInvalid("a checkpoint has an origin, a size, a root hash and a timestamp line")
    origin, size, root, stamp, _ = lines
    if not _DECIMAL_RE.fullmatch(size):
        raise TreeHeadInvalid("the tree size line must be a decimal number without leading zeros")
    match = _TIMESTAMP_RE.fullmatch(stamp)
    if match is None:
        raise TreeHeadInvalid("the extension line must be 'timestamp <milliseconds>'")
    head = TreeHead(origin=origin, tree_size=int(size), root_hash=_b64(root, HASH_BYTES, "root hash"),
                    timestamp_ms=int(match.group(1)))
    if head.text() != text:
        raise TreeHeadInvalid("the checkpoint is not in canonical form")
    return head


def open_head(note: str, keys: Sequence[VerifyKey]) -> tuple[TreeHead, VerifyKey]:
    """The head of a signed checkpoint once a signature by its origin under one of ``keys``
    verifies; returns the head and the key. Raises TreeHeadInvalid otherwise."""
    text, _ = split_note(note)
    head = parse_checkpoint(text)
    _text, key = open_note(note, head.origin, keys)
    return head, key


def head_from_dict(data: Any, keys: Sequence[VerifyKey]) -> SignedTreeHead:
    """A :class:`SignedTreeHead` from its JSON form, verified; the fields must match the note."""
    if not isinstance(data, dict) or not isinstance(data.get("note"), str):
        raise TreeHeadInvalid("a tree head is an object with its signed 'note'")
    head, _key = open_head(data["note"], keys)
    expected = SignedTreeHead(head=head, note=data["note"], kid=str(data.get("kid", ""))).as_dict()
    for field in ("origin", "tree_size", "root_hash", "timestamp_ms"):
        if field in data and data[field] != expected[field]:
            raise TreeHeadInvalid(f"the tree head's {field} does not match its signed note")
    return SignedTreeHead(head=head, note=data["note"], kid=expected["kid"])


def check_successor(previous: TreeHead, head: TreeHead) -> None:
    """Raise unless ``head`` may follow ``previous``: same log, later time, no fewer entries."""
    if head.origin != previous.origin:
        raise TreeHeadInvalid(f"tree heads of two logs ({previous.origin!r}, {head.origin!r})")
    if head.timestamp_ms <= previous.timestamp_ms:
        raise TreeHeadInvalid(f"tree head timestamps must strictly increase ({previous.timestamp_ms} "
                              f"then {head.timestamp_ms})")
    if head.tree_size < previous.tree_size:
        raise TreeHeadInvalid(f"a later tree head is smaller ({previous.tree_size} then {head.tree_size})")


def _check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in "\n" + text:
        raise TreeHeadInvalid("a note's text is non-empty lines, each ending in a newline")
    if any((c < " " and c != "\n") or c == "\x7f" or "\ud800" <= c <= "\udfff" for c in text):
        raise TreeHeadInvalid("a note holds no control characters but newlines")


def _b64(text: str, length: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TreeHeadInvalid(f"the {what} is not standard base64") from None
    if len(raw) != length or base64.b64encode(raw).decode("ascii") != text:
        raise TreeHeadInvalid(f"the {what} must be {length} bytes in canonical base64")
    return raw
