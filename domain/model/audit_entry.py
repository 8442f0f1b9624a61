"""What a leaf of the audit tree is: one event exactly as the log stores it.

The leaf of the event at log position p is ``SHA-256(0x00 || JCS(entry))`` (RFC 9162 leaf
hash over RFC 8785 canonical JSON) where the entry is::

    {"position": p, "originator_id": "<uuid>", "originator_version": v, "topic": "<module:Class>",
     "state": "<the stored state bytes, as UTF-8 text>"}

The state is the stored bytes themselves (the library's JSON), not a decoding of them, so a
leaf never depends on the code that reads it: an upcast, a new transcoding or a changed
class cannot change the hash of an old event. Bytes that are not UTF-8 (a compressed or
enciphered store) go in ``"state_b64"`` (standard base64) instead. The position is part of
the entry, so deleting, inserting or swapping events changes the leaves, and the tree.

Below, the proofs a third party checks offline with only the hub's public key(s): an
inclusion bundle (an entry, its audit path, the signed head), a consistency bundle (two
signed heads and the proof between them) and an export (every entry up to the latest head,
with the heads). Pure: the checks take parsed JSON and keys, and raise or report.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from domain.model.errors import InvalidInput, ProofInvalid, TreeHeadInvalid
from domain.model.jcs import MAX_SAFE_INTEGER, canonical_json
from domain.model.keys import VerifyKey
from domain.model.merkle import CompactRange, leaf_hash, verify_consistency, verify_inclusion
from domain.model.tree_head import SignedTreeHead, TreeHead, check_successor, head_from_dict

ENTRY_FIELDS = ("position", "originator_id", "originator_version", "topic")
ENTRY_BYTES_MAX = 4 * 1024 * 1024  # an entry in a proof or an export: far above any event we store


def entry_of(position: int, originator_id: Any, originator_version: int, topic: str, state: bytes) -> dict[str, Any]:
    """The entry of one stored event (a notification of the log)."""
    entry: dict[str, Any] = {"position": position, "originator_id": str(originator_id),
                             "originator_version": originator_version, "topic": topic}
    try:
        entry["state"] = bytes(state).decode("utf-8")
    except UnicodeDecodeError:
        entry["state_b64"] = base64.b64encode(bytes(state)).decode("ascii")
    return entry


def entry_bytes(entry: dict[str, Any]) -> bytes:
    """The canonical bytes a leaf hashes (RFC 8785).

    An entry's shape is fixed (ASCII member names, safe integers, strings), so its JCS form is
    written here directly, a tenth of the general serialiser's time (the audit walk hashes
    every event): members in code-unit order, integers in decimal, strings as ``json.dumps``
    without ASCII escaping writes them, which is RFC 8785's escaping (the two short forms
    and ``\\u00xx`` for other controls, everything else as is). Anything else goes through
    :func:`~domain.model.jcs.canonical_json`; a test holds the two equal.
    """
    position, version = entry.get("position"), entry.get("originator_version")
    state_key = "state" if "state" in entry else "state_b64"
    if (len(entry) == 5 and _is_count(position) and _is_count(version) and isinstance(entry.get(state_key), str)
            and isinstance(entry.get("originator_id"), str) and isinstance(entry.get("topic"), str)):
        text = (f'{{"originator_id":{_string(entry["originator_id"])},"originator_version":{version},'
                f'"position":{position},"{state_key}":{_string(entry[state_key])},"topic":{_string(entry["topic"])}}}')
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: JCS refuses it
            raise InvalidInput("a lone surrogate cannot be canonicalised") from None
    return canonical_json(entry, allow_floats=False)


_string = json.JSONEncoder(ensure_ascii=False).encode


def entry_leaf_hash(entry: dict[str, Any]) -> bytes:
    return leaf_hash(entry_bytes(entry))


_CONTROL = bytes(range(0x20))  # what JCS escapes besides '"' and '\\'
_PLAIN_TOPIC = re.compile(r"[A-Za-z0-9_.:]+")


def stored_leaf_hash(position: int, originator_id: Any, originator_version: int, topic: str, state: bytes) -> bytes:
    """``entry_leaf_hash(entry_of(...))`` computed on the bytes, for the walks that hash every event.

    For the usual record (ASCII state bytes with no control character, a plain topic, counts in
    range) the JCS string of the state is the bytes with ``\\`` and ``"`` escaped, so it is
    hashed as it is, without a text round trip; anything else takes :func:`entry_bytes`. A test
    holds the two equal, edge cases included.
    """
    state = bytes(state)
    if (type(originator_id) is UUID and state.isascii() and len(state.translate(None, _CONTROL)) == len(state)
            and _PLAIN_TOPIC.fullmatch(topic) is not None and _is_count(position) and _is_count(originator_version)):
        digest = hashlib.sha256(b'\x00{"originator_id":"')
        digest.update(f'{originator_id}","originator_version":{originator_version},"position":{position},'
                      '"state":"'.encode("ascii"))
        digest.update(state.replace(b"\\", b"\\\\").replace(b'"', b'\\"'))
        digest.update(f'","topic":"{topic}"}}'.encode("ascii"))
        return digest.digest()
    return entry_leaf_hash(entry_of(position, originator_id, originator_version, topic, state))


def check_entry(entry: Any) -> dict[str, Any]:
    """Refuse anything but an entry of the shape :func:`entry_of` makes; return it.

    Raises:
        ProofInvalid: a missing or extra field, a wrong type, an unsafe integer, bad base64.
    """
    if not isinstance(entry, dict):
        raise ProofInvalid("an audit entry is a JSON object")
    state_keys = {"state", "state_b64"} & set(entry)
    if set(entry) != {*ENTRY_FIELDS, *state_keys} or len(state_keys) != 1:
        raise ProofInvalid(f"an audit entry has exactly {', '.join(ENTRY_FIELDS)} and state or state_b64")
    for field in ("position", "originator_version"):
        value = entry[field]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INTEGER:
            raise ProofInvalid(f"the entry's {field} must be a non-negative safe integer")
    for field in ("originator_id", "topic", *state_keys):
        if not isinstance(entry[field], str):
            raise ProofInvalid(f"the entry's {field} must be a string")
    if "state_b64" in entry:
        try:
            base64.b64decode(entry["state_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ProofInvalid("the entry's state_b64 is not standard base64") from None
    try:
        size = len(entry_bytes(entry))
    except InvalidInput as exc:
        raise ProofInvalid(f"the entry cannot be canonicalised: {exc.detail}") from None
    if size > ENTRY_BYTES_MAX:
        raise ProofInvalid("the entry is too large")
    return entry


# -- proofs a third party checks offline, with the hub's public key(s) only -------------------
INCLUSION_TYPE = "aimarket.audit.inclusion_proof"
CONSISTENCY_TYPE = "aimarket.audit.consistency_proof"
EXPORT_TYPE = "aimarket.audit.export"
BUNDLE_VERSION = 1
PROOF_ELEMENTS_MAX = 64  # a tree of 2**63 leaves needs 63


def inclusion_bundle(entry: dict[str, Any], leaf_index: int, head: SignedTreeHead, proof: Sequence[bytes]
                     ) -> dict[str, Any]:
    """A self-contained inclusion proof of ``entry`` against a signed head."""
    return {"type": INCLUSION_TYPE, "version": BUNDLE_VERSION, "entry": entry, "leaf_index": leaf_index,
            "tree_size": head.head.tree_size, "leaf_hash": _b64(entry_leaf_hash(entry)),
            "proof": [_b64(p) for p in proof], "tree_head": head.as_dict()}


def consistency_bundle(first: SignedTreeHead, second: SignedTreeHead, proof: Sequence[bytes]) -> dict[str, Any]:
    return {"type": CONSISTENCY_TYPE, "version": BUNDLE_VERSION, "first": first.as_dict(),
            "second": second.as_dict(), "proof": [_b64(p) for p in proof]}


def check_inclusion_bundle(bundle: Any, keys: Sequence[VerifyKey]) -> tuple[dict[str, Any], TreeHead]:
    """Verify an inclusion bundle: the head's signature under one of ``keys``, the leaf hash
    recomputed from the entry (an edited entry fails), the audit path to the head's root.

    Returns the entry and the head. Raises ProofInvalid or TreeHeadInvalid.
    """
    _check_type(bundle, INCLUSION_TYPE)
    entry = check_entry(bundle.get("entry"))
    signed = head_from_dict(bundle.get("tree_head"), keys)
    index, size = bundle.get("leaf_index"), bundle.get("tree_size")
    if not _is_count(index) or size != signed.head.tree_size:
        raise ProofInvalid("the proof's leaf_index and tree_size must be integers, the size the head's")
    leaf = entry_leaf_hash(entry)
    if "leaf_hash" in bundle and bundle["leaf_hash"] != _b64(leaf):
        raise ProofInvalid(f"position {entry['position']}: the entry does not hash to the proof's leaf hash")
    verify_inclusion(index, size, leaf, _proof(bundle.get("proof")), signed.head.root_hash)
    return entry, signed.head


def check_consistency_bundle(bundle: Any, keys: Sequence[VerifyKey]) -> tuple[TreeHead, TreeHead]:
    """Verify both heads' signatures, their order and the consistency proof between them."""
    _check_type(bundle, CONSISTENCY_TYPE)
    first = head_from_dict(bundle.get("first"), keys).head
    second = head_from_dict(bundle.get("second"), keys).head
    if first != second:
        check_successor(first, second)
    verify_consistency(first.tree_size, second.tree_size, first.root_hash, second.root_hash,
                       _proof(bundle.get("proof")))
    return first, second


class ExportChecker:
    """Checks an export line by line (a header, then entries in log order with each signed head
    right after the entry that completes it): every head must verify under ``keys``, follow the
    one before and have the root the entries before it give. Problems name the line."""

    def __init__(self, keys: Sequence[VerifyKey], problems_max: int = 100) -> None:
        self.keys = list(keys)
        self.problems: list[str] = []
        self.problems_max = problems_max
        self.origin: str | None = None
        self.tree = CompactRange()
        self.last_position = -1
        self.heads: list[TreeHead] = []
        self.line = 0

    def feed(self, record: Any) -> None:
        self.line += 1
        try:
            self._feed(record)
        except (ProofInvalid, TreeHeadInvalid) as exc:
            self.add_problem(str(exc.detail))

    def _feed(self, record: Any) -> None:
        kind = record.get("type") if isinstance(record, dict) else None
        if self.origin is None:
            if kind != EXPORT_TYPE or record.get("version") != BUNDLE_VERSION or not isinstance(record.get("origin"), str):
                raise ProofInvalid(f"an export starts with a {EXPORT_TYPE} header of version {BUNDLE_VERSION}")
            self.origin = record["origin"]
        elif kind == "entry":
            entry = check_entry(record.get("entry"))
            if record.get("leaf_index") != self.tree.size:
                raise ProofInvalid(f"entries must come in leaf order: expected leaf {self.tree.size}")
            if entry["position"] <= self.last_position:
                raise ProofInvalid(f"position {entry['position']}: positions must increase")
            self.last_position = entry["position"]
            self.tree.append(entry_leaf_hash(entry))
        elif kind == "tree_head":
            self._head(record)
        else:
            raise ProofInvalid(f"unknown record type {kind!r}")

    def _head(self, record: dict[str, Any]) -> None:
        head = head_from_dict(record, self.keys).head
        if head.origin != self.origin:
            raise TreeHeadInvalid(f"a tree head of another log ({head.origin!r})")
        if self.heads:
            check_successor(self.heads[-1], head)
        self.heads.append(head)
        if head.tree_size != self.tree.size:
            raise ProofInvalid(f"the head of size {head.tree_size} comes after {self.tree.size} entries")
        if self.tree.root() != head.root_hash:
            raise ProofInvalid(f"the signed head of size {head.tree_size} does not match the entries before it: "
                               "the export differs from what the hub signed")

    def add_problem(self, text: str) -> None:
        if len(self.problems) < self.problems_max:
            self.problems.append(f"line {self.line}: {text}")

    def finish(self) -> dict[str, Any]:
        if self.origin is None:
            self.add_problem("an empty export")
        elif not self.heads:
            self.add_problem("the export holds no signed tree head")
        elif self.heads[-1].tree_size != self.tree.size:
            self.add_problem(f"{self.tree.size - self.heads[-1].tree_size} entries after the last signed head")
        return {"ok": not self.problems, "entries": self.tree.size, "heads": len(self.heads),
                "tree_size": self.heads[-1].tree_size if self.heads else 0, "problems": self.problems}


def _check_type(bundle: Any, kind: str) -> None:
    if not isinstance(bundle, dict) or bundle.get("type") != kind or bundle.get("version") != BUNDLE_VERSION:
        raise ProofInvalid(f"expected a {kind} of version {BUNDLE_VERSION}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SAFE_INTEGER


def _proof(value: Any) -> list[bytes]:
    if not isinstance(value, list) or len(value) > PROOF_ELEMENTS_MAX or not all(isinstance(p, str) for p in value):
        raise ProofInvalid(f"a proof is a list of at most {PROOF_ELEMENTS_MAX} base64 hashes")
    try:
        return [base64.b64decode(p, validate=True) for p in value]
    except (binascii.Error, ValueError):
        raise ProofInvalid("a proof element is not standard base64") from None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
