"""Compute assets: the manifest's shape, metering units, and the messages of a compute session.

A compute asset is a Python callable the seller's node runs for buyers (``node/compute``). Its
manifest (JSON) is a superset of the model/pipeline manifest ``aim-node profile --manifest``
reads, so the same file is profiled, published and registered:

================  ========================================================================
``name``          text
``kind``          ``pipeline`` or ``model``
``framework``     text (``python``, ``onnxruntime``, ...)
``size_bytes``    integer ≥ 0 (the model files, for the catalogue)
``licence``       text (``license`` accepted)
``metering_unit`` one of :data:`UNITS`
``entry_point``   ``package.module:function``: called with the parsed input, returns the output
``input_schema``  JSON Schema (2020-12) of the input; ``output_schema`` the same for the output
``metering``      optional ``{"pointer", "of", "max_units_per_call"}`` (below)
``limits``        optional ``{"timeout_ms", "max_input_bytes", "max_output_bytes"}``
``safety``        optional ``{"deny_patterns": [regex, ...], "disable": [rule, ...]}``
``description``   optional text
================  ========================================================================

Units are counted by the node, never declared by the buyer (:func:`measure_units`):
``calls`` one per successful call; ``bytes`` the input's, the output's or both (``of``);
``seconds`` the call's wall time rounded up to whole seconds (at least 1); ``rows`` and
``tokens`` the integer, or the length of the array, at the RFC 6901 JSON pointer
``metering.pointer`` in the output (``of: "output"``, the default) or the input. A call never
counts more than ``max_units_per_call`` (the invoke token's ``max_call_units``).

Messages (inside the session's encrypted ``data`` records, ``domain.model.frames``): a 6-byte
header ``kind u8 || call u32be || flags u8`` then the body; see :data:`KINDS`.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from domain.model.errors import ComputeAssetInvalid, InvokeMessageInvalid
from domain.model.frames import MAX_RECORD

UNITS = ("calls", "rows", "tokens", "bytes", "seconds")
KINDS_OF_ASSET = ("pipeline", "model")
OF = ("input", "output", "both")
MAX_TIMEOUT_MS = 3_600_000
MAX_INPUT_BYTES = 64 * 2**20
MAX_OUTPUT_BYTES = 256 * 2**20
DEFAULT_LIMITS = {"timeout_ms": 30_000, "max_input_bytes": 1 * 2**20, "max_output_bytes": 16 * 2**20}
_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_FIELDS = {"name", "kind", "framework", "size_bytes", "licence", "license", "metering_unit", "entry_point",
           "input_schema", "output_schema", "metering", "limits", "safety", "description"}


@dataclass(frozen=True, slots=True)
class Metering:
    """How a call's units are counted (see the module docstring)."""

    unit: str
    pointer: str | None
    of: str
    max_units_per_call: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """A checked compute manifest. ``raw`` is the manifest as written."""

    raw: dict[str, Any]
    name: str
    entry_point: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    metering: Metering
    timeout_ms: int
    max_input_bytes: int
    max_output_bytes: int
    deny_patterns: tuple[str, ...]
    disabled_rules: tuple[str, ...]


def _bad(detail: str, param: str) -> ComputeAssetInvalid:
    return ComputeAssetInvalid(detail, param=param)


def _int(section: Mapping[str, Any], name: str, low: int, high: int, default: int) -> int:
    value = section.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise _bad(f"{name} must be an integer in [{low}, {high}]", name)
    return value


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise _bad(f"manifest field {name!r} is required: a non-empty string (at most 256 characters)", name)
    return value.strip()


def _metering(data: Mapping[str, Any], unit: str, limits: dict[str, int]) -> Metering:
    section = data.get("metering", {})
    if not isinstance(section, dict) or set(section) - {"pointer", "of", "max_units_per_call"}:
        raise _bad("metering is {pointer?, of?, max_units_per_call?}", "metering")
    pointer = section.get("pointer")
    if pointer is not None and (not isinstance(pointer, str) or not (pointer == "" or pointer.startswith("/"))):
        raise _bad("metering.pointer is an RFC 6901 JSON pointer", "metering.pointer")
    if unit in ("rows", "tokens") and pointer is None:
        raise _bad(f"metering {unit} needs metering.pointer (where the count is)", "metering.pointer")
    of = section.get("of", "both" if unit == "bytes" else "output")
    if of not in OF or (unit in ("rows", "tokens") and of == "both"):
        raise _bad(f"metering.of must be one of {OF} ('both' only for bytes)", "metering.of")
    defaults = {"calls": 1, "seconds": math.ceil(limits["timeout_ms"] / 1000),
                "bytes": {"input": limits["max_input_bytes"], "output": limits["max_output_bytes"],
                          "both": limits["max_input_bytes"] + limits["max_output_bytes"]}[of]}
    if unit in ("rows", "tokens") and "max_units_per_call" not in section:
        raise _bad(f"metering {unit} needs metering.max_units_per_call", "metering.max_units_per_call")
    most = _int(section, "max_units_per_call", 1, 2**31, defaults.get(unit, 1))
    if unit == "calls" and most != 1:
        raise _bad("a call counts one unit: max_units_per_call is 1", "metering.max_units_per_call")
    return Metering(unit, pointer, of, most)


def _safety(data: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    section = data.get("safety", {})
    if not isinstance(section, dict) or set(section) - {"deny_patterns", "disable"}:
        raise _bad("safety is {deny_patterns?, disable?}", "safety")
    patterns, disabled = section.get("deny_patterns", []), section.get("disable", [])
    for name, items in (("deny_patterns", patterns), ("disable", disabled)):
        if not isinstance(items, list) or len(items) > 256 or not all(isinstance(x, str) and x for x in items):
            raise _bad(f"safety.{name} is a list of strings", f"safety.{name}")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _bad(f"safety.deny_patterns has a bad regex {pattern!r}: {exc}", "safety.deny_patterns") from exc
    return tuple(patterns), tuple(disabled)


def parse_manifest(data: Any) -> Manifest:
    """Check a compute manifest (parsed JSON) and return it typed.

    Raises:
        ComputeAssetInvalid: a field is missing, unknown or out of range (``param`` names it).
            Whether the schemas are valid JSON Schemas and the entry point imports is the
            node's check (``node.compute.registry``): it needs the libraries and the code.
    """
    if not isinstance(data, dict):
        raise _bad("a manifest is a JSON object", "manifest")
    unknown = set(data) - _FIELDS
    if unknown:
        raise _bad(f"unknown manifest fields: {sorted(unknown)}", sorted(unknown)[0])
    for name in ("name", "framework"):
        _text(data, name)
    if not isinstance(data.get("licence", data.get("license")), str):
        raise _bad("manifest field 'licence' is required", "licence")
    if data.get("kind", "pipeline") not in KINDS_OF_ASSET:
        raise _bad(f"kind must be one of {KINDS_OF_ASSET}", "kind")
    if type(data.get("size_bytes")) is not int or data["size_bytes"] < 0:
        raise _bad("size_bytes must be a non-negative integer", "size_bytes")
    unit = data.get("metering_unit")
    if unit not in UNITS:
        raise _bad(f"metering_unit must be one of {UNITS}", "metering_unit")
    entry = data.get("entry_point")
    if not isinstance(entry, str) or not _ENTRY.fullmatch(entry):
        raise _bad("entry_point must be 'package.module:function'", "entry_point")
    for name in ("input_schema", "output_schema"):
        if not isinstance(data.get(name), dict):
            raise _bad(f"{name} must be a JSON Schema object", name)
    section = data.get("limits", {})
    if not isinstance(section, dict) or set(section) - set(DEFAULT_LIMITS):
        raise _bad(f"limits is {{{', '.join(DEFAULT_LIMITS)}}} (each optional)", "limits")
    limits = {"timeout_ms": _int(section, "timeout_ms", 1, MAX_TIMEOUT_MS, DEFAULT_LIMITS["timeout_ms"]),
              "max_input_bytes": _int(section, "max_input_bytes", 1, MAX_INPUT_BYTES,
                                      DEFAULT_LIMITS["max_input_bytes"]),
              "max_output_bytes": _int(section, "max_output_bytes", 1, MAX_OUTPUT_BYTES,
                                       DEFAULT_LIMITS["max_output_bytes"])}
    patterns, disabled = _safety(data)
    return Manifest(dict(data), data["name"].strip(), entry, data["input_schema"], data["output_schema"],
                    _metering(data, unit, limits), limits["timeout_ms"], limits["max_input_bytes"],
                    limits["max_output_bytes"], patterns, disabled)


def resolve_pointer(document: Any, pointer: str) -> Any:
    """RFC 6901: the value at ``pointer`` in ``document`` (KeyError / IndexError when absent)."""
    if pointer == "":
        return document
    value = document
    for part in pointer[1:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(value, list):
            if not part.isdigit() or (part != "0" and part.startswith("0")):
                raise KeyError(part)
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value[part]
        else:
            raise KeyError(part)
    return value


def count_at(document: Any, pointer: str) -> int:
    """The count a ``rows``/``tokens`` pointer designates: an integer ≥ 0, or an array's length.

    Raises:
        ValueError: nothing countable there (the call then fails, unbilled).
    """
    try:
        value = resolve_pointer(document, pointer)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"nothing at metering pointer {pointer!r}") from exc
    if isinstance(value, list):
        return len(value)
    if type(value) is int and value >= 0:
        return value
    raise ValueError(f"the value at metering pointer {pointer!r} is not a count")


def measure_units(metering: Metering, *, input_bytes: int, output_bytes: int, elapsed_ms: int,
                  counted: int | None) -> int:
    """The units one successful call is billed, at most ``max_units_per_call``.

    ``counted`` is :func:`count_at` of the document ``metering.of`` names (``rows``/``tokens``).
    """
    unit = metering.unit
    if unit == "calls":
        units = 1
    elif unit == "seconds":
        units = max(1, -(-elapsed_ms // 1000))
    elif unit == "bytes":
        units = {"input": input_bytes, "output": output_bytes, "both": input_bytes + output_bytes}[metering.of]
    else:
        if counted is None or counted < 0:
            raise ValueError(f"a {unit} call needs its count")
        units = counted
    return min(units, metering.max_units_per_call)


# -- messages of a compute session ----------------------------------------------------------
CALL, CANCEL, COUNTERSIGN = 0x01, 0x02, 0x03
STATE, OUTPUT, RECEIPT, REJECTION, REFUSAL = 0x80, 0x81, 0x82, 0x83, 0x84
KINDS = {CALL: "call", CANCEL: "cancel", COUNTERSIGN: "countersign", STATE: "state", OUTPUT: "output",
         RECEIPT: "receipt", REJECTION: "rejection", REFUSAL: "refusal"}
FROM_BUYER = frozenset({CALL, CANCEL, COUNTERSIGN})
FROM_NODE = frozenset({STATE, OUTPUT, RECEIPT, REJECTION, REFUSAL})
CHUNKED = frozenset({CALL, OUTPUT})
LAST = 0x01
MESSAGE_HEADER = struct.Struct(">BIB")
MAX_BODY = MAX_RECORD - MESSAGE_HEADER.size
MAX_CALL_ID = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Message:
    """One compute message: ``kind``, the buyer's ``call`` id (0 for session messages), whether
    it is the ``last`` chunk (always true for unchunked kinds), and its ``body``."""

    kind: int
    call: int
    last: bool
    body: bytes

    @property
    def name(self) -> str:
        return KINDS[self.kind]


def pack_message(kind: int, call: int, body: bytes = b"", *, last: bool = True) -> bytes:
    """The plaintext of one ``data`` record carrying a compute message."""
    if kind not in KINDS or not 0 <= call <= MAX_CALL_ID or len(body) > MAX_BODY:
        raise InvokeMessageInvalid("compute message out of range")
    if kind not in CHUNKED and not last:
        raise InvokeMessageInvalid(f"a {KINDS[kind]} message is never chunked")
    return MESSAGE_HEADER.pack(kind, call, LAST if last else 0) + body


def unpack_message(payload: bytes, *, allowed: frozenset[int]) -> Message:
    """Parse one record's plaintext; ``allowed`` is the set of kinds the peer may send.

    Raises:
        InvokeMessageInvalid: too short, an unknown or unexpected kind, unknown flags.
    """
    if len(payload) < MESSAGE_HEADER.size:
        raise InvokeMessageInvalid("a compute message has a 6-byte header")
    kind, call, flags = MESSAGE_HEADER.unpack_from(payload)
    if kind not in allowed:
        raise InvokeMessageInvalid(f"unexpected compute message kind 0x{kind:02x}")
    if flags & ~LAST or (kind not in CHUNKED and not flags & LAST):
        raise InvokeMessageInvalid("unknown compute message flags")
    return Message(kind, call, bool(flags & LAST), payload[MESSAGE_HEADER.size:])


def chunk_messages(kind: int, call: int, data: bytes, size: int = MAX_BODY) -> Iterator[bytes]:
    """``data`` as one or more messages of a chunked ``kind`` (the last one flagged)."""
    if kind not in CHUNKED or not 1 <= size <= MAX_BODY:
        raise InvokeMessageInvalid("only call inputs and outputs are chunked")
    if not data:
        yield pack_message(kind, call, b"", last=True)
        return
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield pack_message(kind, call, bytes(view[start : start + size]), last=start + size >= len(data))
