"""FastJSONTranscoder decodes exactly as the library's JSONTranscoder, or falls back to it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)

from domain.app.eventsourcing_ext import FastJSONTranscoder


def _pair() -> tuple[JSONTranscoder, FastJSONTranscoder]:
    library, fast = JSONTranscoder(), FastJSONTranscoder()
    for transcoder in (library, fast):
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
            transcoder.register(transcoding)
    return library, fast


def _same(data: bytes) -> None:
    library, fast = _pair()
    try:
        expected = library.decode(data)
    except Exception as exc:
        with pytest.raises(type(exc)):
            fast.decode(data)
        return
    got = fast.decode(data)
    assert got == expected
    assert json.dumps(got, default=repr) == json.dumps(expected, default=repr)  # key order and types too
    assert [type(v) for v in _walk(got)] == [type(v) for v in _walk(expected)]


def _walk(value):
    yield value
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def test_events_as_the_hub_encodes_them_decode_the_same() -> None:
    library, _ = _pair()
    when = datetime(2026, 12, 2, 18, 0, 0, 123456, tzinfo=UTC)
    for state in (
        {"timestamp": when, "originator_topic": "x:Y", "amount_minor": 1200, "meta": {"actor": "a"}},
        {"timestamp": when, "ref": uuid.uuid4(), "price": Decimal("1.25"), "nested": {"list": [1, 2.5, None, True]}},
        {"timestamp": when, "envelope": {"proof": {"proofValue": "z3"}, "credentialSubject": {"entry": {"seq": 1}}}},
        {"timestamp": when, "text": "caf\u00e9 \u2603 \U0001f600", "big": 2**63 - 1, "neg": -0, "float": 1e-300},
        {"plain": "no marks at all"},
        [1, 2, {"timestamp": when}],
    ):
        _same(library.encode(state))


@pytest.mark.parametrize("data", [
    b'{"a":1,"a":2,"b":3}',  # duplicate keys: the last wins, at the first one's place
    b'{"t":{"_type_":"datetime_iso","_data_":"2026-12-02T18:00:00+00:00"},"t":{"_type_":"uuid_hex","_data_":"'
    + uuid.UUID(int=7).hex.encode() + b'"}}',
    b'{"n":{"deep":{"_type_":"uuid_hex","_data_":"' + uuid.UUID(int=1).hex.encode() + b'"}}}',  # nested mark
    b'{"s":"a \\"_type_\\" in a string","t":{"_type_":"decimal_str","_data_":"1.5"}}',  # escaped mark
    b'{"k":{"\\u005ftype_":"decimal_str","_data_":"2"},"t":{"_type_":"decimal_str","_data_":"1"}}',  # escaped key
    b'{"x":{"_type_":"unknown_name","_data_":"1"}}',  # unknown transcoding: the library's error
    b'{"x":{"_type_":"decimal_str","_data_":"1","extra":1}}',  # three members: not a transcoded object
    b'{"x":{"_type_":"decimal_str","_data_":["1"]}}',  # non-string data
    b'{"x":NaN}', b'{"x":Infinity}', b'{"x":1e400}', b'{"x":123456789012345678901234567890}',
    b'{"x":"\\ud800"}', b'{"x":"\xff"}', b'\xef\xbb\xbf{}', b'{"x":1', b"[]", b'"str"', b"  {}  ",
])
def test_edge_cases_decode_the_same_or_fail_the_same(data: bytes) -> None:
    _same(data)


def test_an_unknown_type_name_raises_the_library_error() -> None:
    _, fast = _pair()
    with pytest.raises(TranscodingNotRegisteredError):
        fast.decode(b'{"timestamp":{"_type_":"nope","_data_":"1"}}')


def test_the_hub_application_decodes_with_it(runtime) -> None:
    assert isinstance(runtime.market.mapper.transcoder, FastJSONTranscoder)
