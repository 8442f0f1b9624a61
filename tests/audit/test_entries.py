"""Audit entries: the hand-written JCS form equals RFC 8785 (the general serialiser) for every
entry; the leaf hashes the stored bytes; malformed entries in a proof are refused."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.model.audit_entry import check_entry, entry_bytes, entry_leaf_hash, entry_of, stored_leaf_hash
from domain.model.errors import ProofInvalid
from domain.model.jcs import MAX_SAFE_INTEGER, canonical_json

TEXT = st.text(st.characters(codec="utf-8"), max_size=60)  # controls, DEL, U+2028, astral: all of UTF-8


@settings(max_examples=300, deadline=None)
@given(st.integers(0, MAX_SAFE_INTEGER), st.integers(0, MAX_SAFE_INTEGER), TEXT, TEXT, TEXT, st.booleans())
def test_the_fast_form_is_rfc_8785(position: int, version: int, oid: str, topic: str, state: str, b64: bool) -> None:
    entry = {"position": position, "originator_id": oid, "originator_version": version, "topic": topic,
             ("state_b64" if b64 else "state"): state}
    assert entry_bytes(entry) == canonical_json(entry, allow_floats=False)


STATE_BYTES = st.one_of(st.binary(max_size=80), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
                        st.text("ab\\\"{}:,\x00\x1f\x7f", max_size=40).map(str.encode))
TOPIC = st.one_of(st.just("domain.model.channel:Channel.Debited"), TEXT)


@settings(max_examples=400, deadline=None)
@given(st.integers(-1, MAX_SAFE_INTEGER + 1), st.integers(-1, MAX_SAFE_INTEGER + 1), st.uuids(), TOPIC, STATE_BYTES)
def test_the_stored_leaf_hash_is_the_entry_leaf_hash(position: int, version: int, oid: uuid.UUID, topic: str,
                                                     state: bytes) -> None:
    try:
        expected = entry_leaf_hash(entry_of(position, oid, version, topic, state))
    except Exception as exc:
        with pytest.raises(type(exc)):
            stored_leaf_hash(position, oid, version, topic, state)
        return
    assert stored_leaf_hash(position, oid, version, topic, state) == expected
    assert stored_leaf_hash(position, str(oid), version, topic, memoryview(state)) == expected


def test_the_entry_is_the_stored_bytes() -> None:
    oid = uuid.uuid4()
    entry = entry_of(7, oid, 3, "m:C.E", b'{"a":1}')
    assert entry == {"position": 7, "originator_id": str(oid), "originator_version": 3, "topic": "m:C.E",
                     "state": '{"a":1}'}
    assert entry_bytes(entry) == (f'{{"originator_id":"{oid}","originator_version":3,"position":7,'
                                  '"state":"{\\"a\\":1}","topic":"m:C.E"}').encode()
    assert entry_leaf_hash(entry) != entry_leaf_hash(entry_of(7, oid, 3, "m:C.E", b'{"a": 1}'))  # bytes, not meaning
    binary = entry_of(7, oid, 3, "m:C.E", b"\xff\x00")
    assert binary["state_b64"] == base64.b64encode(b"\xff\x00").decode() and "state" not in binary
    assert check_entry(binary) is binary


@pytest.mark.parametrize("bad", [
    {"position": 1, "originator_id": "x", "originator_version": 1, "topic": "t"},  # no state
    {"position": 1, "originator_id": "x", "originator_version": 1, "topic": "t", "state": "", "state_b64": ""},
    {"position": 1, "originator_id": "x", "originator_version": 1, "topic": "t", "state": "", "extra": 1},
    {"position": True, "originator_id": "x", "originator_version": 1, "topic": "t", "state": ""},
    {"position": -1, "originator_id": "x", "originator_version": 1, "topic": "t", "state": ""},
    {"position": 2**53, "originator_id": "x", "originator_version": 1, "topic": "t", "state": ""},
    {"position": 1, "originator_id": 5, "originator_version": 1, "topic": "t", "state": ""},
    {"position": 1, "originator_id": "x", "originator_version": 1, "topic": "t", "state_b64": "not base64!"},
    {"position": 1, "originator_id": "x", "originator_version": 1, "topic": "t", "state": "\ud800"},
    "not an object",
])
def test_malformed_entries_are_refused(bad) -> None:
    with pytest.raises(ProofInvalid):
        check_entry(bad)
