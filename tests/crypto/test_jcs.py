"""RFC 8785 canonical JSON against the RFC's own examples, and SRI digests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from domain.model.errors import InvalidInput
from domain.model.jcs import canonical_json, loads_strict, sha256_sri

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "rfc8785_jcs.json").read_text(encoding="utf-8"))


def _double(bits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(bits))[0]


def test_rfc8785_sample():
    sample = VECTORS["sample"]
    out = canonical_json(loads_strict(sample["input_text"]))
    assert out == sample["expected"].encode("utf-8")
    assert out == bytes.fromhex(sample["expected_utf8_hex"].replace(" ", ""))


def test_rfc8785_utf16_key_sorting():
    sorting = VECTORS["sorting"]
    out = canonical_json(loads_strict(sorting["input_text"]))
    assert list(json.loads(out).keys()) == sorting["expected_key_order"]


@pytest.mark.parametrize("case", VECTORS["numbers"]["finite"], ids=lambda c: c["ieee754"])
def test_rfc8785_numbers(case):
    assert canonical_json(_double(case["ieee754"])) == case["expected"].encode()
    assert canonical_json({"n": _double(case["ieee754"])}) == b'{"n":' + case["expected"].encode() + b"}"


@pytest.mark.parametrize("bits", VECTORS["numbers"]["reject"])
def test_rfc8785_nan_and_infinity_refused(bits):
    with pytest.raises(InvalidInput):
        canonical_json([_double(bits)])


@pytest.mark.parametrize("case", VECTORS["reject_values"]["cases"], ids=lambda c: c["name"])
def test_outside_i_json_refused(case):
    with pytest.raises(InvalidInput):
        canonical_json(loads_strict(case["input_text"]))


@pytest.mark.parametrize("value", [{1: "a"}, b"bytes", {"a": object()}, {"a": {1, 2}}, 2**53, -(2**53)])
def test_non_json_values_refused(value):
    with pytest.raises(InvalidInput):
        canonical_json(value)


def test_safe_integer_bounds_and_literals():
    assert canonical_json([2**53 - 1, -(2**53 - 1), True, False, None, 0]) == (
        b"[9007199254740991,-9007199254740991,true,false,null,0]"
    )


def test_floats_can_be_forbidden_for_protocol_objects():
    assert canonical_json({"amount": "12.50", "bps": 100}, allow_floats=False) == b'{"amount":"12.50","bps":100}'
    with pytest.raises(InvalidInput):
        canonical_json({"nested": [{"x": 1.5}]}, allow_floats=False)


def test_key_order_and_whitespace_do_not_matter():
    assert canonical_json(loads_strict('{ "b" : [1, 2], "a" : {"y": 1, "x": 2} }')) == canonical_json(
        {"a": {"x": 2, "y": 1}, "b": [1, 2]}
    )


def test_loads_strict_rejects_bad_utf8_and_garbage():
    for bad in (b"\xff{}", b"{", b"", "[1,]"):
        with pytest.raises(InvalidInput):
            loads_strict(bad)


def test_sha256_sri():
    assert sha256_sri(b"") == "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    assert sha256_sri(b"abc") == "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
    with pytest.raises(InvalidInput):
        sha256_sri("abc")  # type: ignore[arg-type]
