"""Bounded JSON in: what every JSON document from outside passes before a parser sees it.

Why a pre-scan of the raw bytes: CPython's ``json`` C scanner recurses once per nesting
level, and this process raises the recursion limit (py-evm sets it to ~12,000 on import),
so 100,000 nested arrays overflowed the C stack of a worker thread: SIGSEGV, the worker
died. ``check_depth`` looks at the bytes first, in time linear in their length, with no
recursion and with the work done by C loops (``bytes.count``, ``re``, ``bytes.replace``),
so a hostile document costs milliseconds and a typical one costs two ``count`` calls.

The hub (``api.http``), the node's hub client (``node.hub_client``) and the token decoder
(``domain.model.tokens``) all read JSON through here. Integers are checked strictly
(``strict_validator``): ``1e3`` is the float 1000.0, not an integer, so a JSON Schema
``integer`` refuses it instead of letting it reach a command as a float.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from domain.model.errors import InvalidText, MalformedBody, NestingTooDeep

DEPTH_MAX = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# A JSON string (possessive, so an unterminated one costs one linear attempt, not a quadratic
# backtrack). Brackets inside strings do not nest, so strings are cut out before counting.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def check_depth(raw: bytes, limit: int = DEPTH_MAX) -> None:
    """Raise ``NestingTooDeep`` if ``raw`` nests arrays/objects deeper than ``limit``.

    Brackets that do not balance raise ``MalformedBody`` (no parser would accept them).
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return  # it cannot nest deeper than it has openers: the common case
    shape = _STRING.sub(b"", raw).translate(_AS_SQUARE, _NOT_BRACKET)  # only "[" and "]" left
    run = b"[" * (limit + 1)
    # Each pass deletes every innermost "[]", which lowers the depth by exactly one; a run of
    # limit+1 openers proves the depth at once (the classic attack stops on the first pass).
    for _ in range(limit):
        if not shape or run in shape:
            break
        reduced = shape.replace(b"[]", b"")
        if len(reduced) == len(shape):
            break
        shape = reduced
    if run in shape or b"[]" in shape:
        raise NestingTooDeep(f"JSON nests deeper than {limit} levels")
    if shape:
        raise MalformedBody("JSON brackets do not balance")


def _no_constant(name: str) -> Any:
    raise MalformedBody(f"{name} is not JSON")


def loads_bounded(raw: bytes | str, limit: int = DEPTH_MAX) -> Any:
    """Parse JSON from outside (UTF-8, at most ``limit`` deep, no NaN/Infinity).

    Raises ``InvalidText`` (not UTF-8), ``NestingTooDeep`` or ``MalformedBody``.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    check_depth(data, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidText("JSON is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError:
        raise MalformedBody("not valid JSON") from None


def _is_strict_integer(_checker: Any, value: Any) -> bool:
    return type(value) is int  # not bool, not an integral float such as 1e3


_STRICT_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_strict_integer)
StrictValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_STRICT_TYPES)


def strict_validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator whose ``integer`` is a JSON integer literal, never a float."""
    return StrictValidator(schema, format_checker=jsonschema.FormatChecker())
