"""Signed tree heads: the C2SP signed-note form against the Go reference vector, checkpoints,
tampering, key rotation (key hashes), successor rules."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from domain.model.errors import TreeHeadInvalid
from domain.model.keys import SigningKey, VerifyKey
from domain.model.merkle import EMPTY_ROOT, leaf_hash
from domain.model.tree_head import (
    TreeHead,
    check_successor,
    head_from_dict,
    key_hash,
    open_head,
    open_note,
    parse_checkpoint,
    sign_head,
    sign_note,
    split_note,
    verifier_key,
)

NOTE = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "signed_note.json").read_text())
PETER_SEED = base64.b64decode(NOTE["peter"]["signer_key"].split("+", 4)[4])
PETER = SigningKey.from_seed(PETER_SEED[1:])
ENOCH = VerifyKey.from_bytes(base64.b64decode(NOTE["enoch"]["verifier_key"].split("+", 2)[2])[1:])
TEXT, PETER_LINE, ENOCH_LINE = NOTE["text"], NOTE["peter_signature_line"], NOTE["enoch_signature_line"]
KEY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(1, 33)))


def test_signed_note_reproduces_the_go_reference_byte_for_byte() -> None:
    assert PETER_SEED[0] == 1  # the Ed25519 algorithm byte
    assert key_hash("PeterNeumann", PETER.verify_key).hex() == NOTE["peter"]["key_hash"]
    assert verifier_key("PeterNeumann", PETER.verify_key) == NOTE["peter"]["verifier_key"]
    assert key_hash("EnochRoot", ENOCH).hex() == NOTE["enoch"]["key_hash"]
    assert sign_note(TEXT, "PeterNeumann", PETER) == TEXT + "\n" + PETER_LINE
    # A cosignature by another key is skipped, then each key opens its own signature.
    both = TEXT + "\n" + PETER_LINE + ENOCH_LINE
    assert open_note(both, "PeterNeumann", [PETER.verify_key]) == (TEXT, PETER.verify_key)
    assert open_note(both, "EnochRoot", [ENOCH]) == (TEXT, ENOCH)
    with pytest.raises(TreeHeadInvalid):
        open_note(both, "EnochRoot", [PETER.verify_key])  # no signature by that name under that key


@pytest.mark.parametrize("bad", [
    TEXT, TEXT + "\n", TEXT + "\n" + PETER_LINE[:-1], "\x01" + TEXT + "\n" + PETER_LINE,
    TEXT + "\n" + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
    TEXT + "\n" + PETER_LINE + "Unexpected line.\n", TEXT + "\n" + PETER_LINE * 101,
], ids=["no-signatures", "blank-only", "unterminated", "control", "bad-name", "unexpected-line", "too-many"])
def test_malformed_notes_are_refused(bad: str) -> None:  # TestOpen's badMsgs, and its 101 signatures
    with pytest.raises(TreeHeadInvalid):
        open_note(bad, "PeterNeumann", [PETER.verify_key])


def test_a_changed_text_or_signature_fails() -> None:
    note = TEXT + "\n" + PETER_LINE
    with pytest.raises(TreeHeadInvalid):
        open_note(note.replace("cryptography", "cryptographY"), "PeterNeumann", [PETER.verify_key])
    with pytest.raises(TreeHeadInvalid):  # TestOpen: four characters spliced into the signature
        open_note(TEXT + "\n" + PETER_LINE[:60] + "ABCD" + PETER_LINE[60:], "PeterNeumann", [PETER.verify_key])


def head(size: int = 3, ts: int = 1_700_000_000_000, root: bytes | None = None) -> TreeHead:
    return TreeHead(origin="hub.test/audit", tree_size=size, root_hash=root or leaf_hash(b"x"), timestamp_ms=ts)


def test_checkpoint_round_trip_and_the_key_that_signed() -> None:
    signed = sign_head(head(), KEY, "signing-1")
    lines = signed.note.split("\n")
    assert lines[:4] == ["hub.test/audit", "3", base64.b64encode(leaf_hash(b"x")).decode(), "timestamp 1700000000000"]
    assert lines[4] == "" and lines[5].startswith("\u2014 hub.test/audit ")
    opened, key = open_head(signed.note, [OTHER.verify_key, KEY.verify_key])  # rotation: several keys
    assert opened == head() and key == KEY.verify_key
    assert head_from_dict(signed.as_dict(), [KEY.verify_key]) == signed
    with pytest.raises(TreeHeadInvalid):
        open_head(signed.note, [OTHER.verify_key])


@pytest.mark.parametrize("edit", [
    lambda n: n.replace("\n3\n", "\n4\n", 1),
    lambda n: n.replace("timestamp 1700000000000", "timestamp 1700000000001"),
    lambda n: n.replace("hub.test/audit\n", "hub.evil/audit\n", 1),
    lambda n: n.replace(base64.b64encode(leaf_hash(b"x")).decode(), base64.b64encode(EMPTY_ROOT).decode()),
    lambda n: n[:-10] + ("A" if n[-10] != "A" else "B") + n[-9:],
], ids=["size", "timestamp", "origin", "root", "signature"])
def test_any_edit_of_a_signed_head_fails(edit) -> None:
    note = sign_head(head(), KEY, "signing-1").note
    with pytest.raises(TreeHeadInvalid):
        open_head(edit(note), [KEY.verify_key])


def test_json_fields_must_match_the_note() -> None:
    data = sign_head(head(), KEY, "signing-1").as_dict()
    with pytest.raises(TreeHeadInvalid):
        head_from_dict({**data, "tree_size": 99}, [KEY.verify_key])
    with pytest.raises(TreeHeadInvalid):
        head_from_dict({"tree_size": 3}, [KEY.verify_key])


@pytest.mark.parametrize("text", [
    "hub.test/audit\n03\nAAAA\ntimestamp 1\n", "hub.test/audit\n3\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n",
    "hub.test/audit\n3\n" + base64.b64encode(EMPTY_ROOT).decode() + "\ntimestamp 01\n",
    "hub test\n3\n" + base64.b64encode(EMPTY_ROOT).decode() + "\ntimestamp 1\n",
])
def test_non_canonical_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(TreeHeadInvalid):
        parse_checkpoint(text)


def test_heads_are_checked_when_built() -> None:
    for bad in ({"tree_size": -1}, {"root_hash": b"short"}, {"timestamp_ms": 2**53}, {"origin": "a b"},
                {"origin": "a+b"}, {"tree_size": True}):
        fields = {"origin": "hub.test/audit", "tree_size": 1, "root_hash": EMPTY_ROOT, "timestamp_ms": 1, **bad}
        with pytest.raises(TreeHeadInvalid):
            TreeHead(**fields)


def test_successors_strictly_later_never_smaller() -> None:
    check_successor(head(3, 10), head(3, 11))
    check_successor(head(3, 10), head(5, 11))
    for later in (head(3, 10), head(3, 9), head(2, 11)):
        with pytest.raises(TreeHeadInvalid):
            check_successor(head(3, 10), later)


def test_split_note_lists_every_signature() -> None:
    text, signatures = split_note(TEXT + "\n" + PETER_LINE + ENOCH_LINE)
    assert text == TEXT and [s[0] for s in signatures] == ["PeterNeumann", "EnochRoot"]
