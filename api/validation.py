"""JSON Schema validation of request bodies: the schemas the OpenAPI document publishes.

Two validators per schema: jsonschema (Draft 2020-12, strict integers: ``strict_validator``)
explains errors; a compiled fastjsonschema function, ~10x faster, decides the common case of
a valid body. Both count ``1e3`` or ``2.0`` as a number, never as an integer, so a float
cannot reach a command where the schema says integer (it would be recorded, then refused).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import fastjsonschema
import jsonschema
from fastjsonschema.draft04 import CodeGeneratorDraft04
from fastjsonschema.draft2019 import CodeGeneratorDraft2019
from fastjsonschema.ref_resolver import RefResolver

from domain.model.errors import InvalidInput
from domain.model.json_input import strict_validator

_UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_VALIDATORS: dict[int, tuple[dict[str, Any], jsonschema.protocols.Validator, Callable[[Any], Any] | None]] = {}


class _StrictTypes(CodeGeneratorDraft2019):
    """fastjsonschema's 2019-09 generator with draft 4's type check: an ``integer`` is a JSON
    integer, never an integral float (``1e3``), as ``strict_validator`` decides too."""

    generate_type = CodeGeneratorDraft04.generate_type


def _compile_fast(schema: dict[str, Any]) -> Callable[[Any], Any]:
    # fastjsonschema.compile() with the generator above (its own body, six lines).
    formats = {"uuid": _UUID_RE}
    resolver = RefResolver.from_schema(schema, handlers={}, store={})
    generator = _StrictTypes(schema, resolver=resolver, formats=formats)
    state = generator.global_state
    exec(generator.func_code, state)  # noqa: S102 - code generated from our own schema constants
    return functools.partial(state[resolver.get_scope_name()], custom_formats=formats)


def _validators(schema: dict[str, Any]) -> tuple[jsonschema.protocols.Validator, Callable[[Any], Any] | None]:
    """Per schema object (schemas are module constants): the jsonschema validator, which
    explains errors, and a compiled one (fastjsonschema, ~10x faster) that decides the
    common case of a valid body. Compiled lazily, once."""
    entry = _VALIDATORS.get(id(schema))
    if entry is None or entry[0] is not schema:
        full = strict_validator(schema)
        try:
            fast: Callable[[Any], Any] | None = _compile_fast(schema)
        except fastjsonschema.JsonSchemaDefinitionException:
            fast = None
        entry = (schema, full, fast)
        _VALIDATORS[id(schema)] = entry
    return entry[1], entry[2]


def check(value: Any, schema: dict[str, Any]) -> None:
    full, fast = _validators(schema)
    if fast is not None:
        try:
            fast(value)
            return
        except fastjsonschema.JsonSchemaValueException:
            pass  # the full validator decides and explains
    error = _closest(jsonschema.exceptions.best_match(full.iter_errors(value)))
    if error is not None:
        param = ".".join(str(p) for p in error.absolute_path) or None
        raise InvalidInput(_describe(error, param), param=param)


def _closest(error: jsonschema.ValidationError | None) -> jsonschema.ValidationError | None:
    """For a body no branch of a ``oneOf`` takes, the error of the branch it came closest to
    (fewest errors: the one its discriminator names), so the answer names the field."""
    while error is not None and error.validator in ("oneOf", "anyOf") and error.context:
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        nearest = min(branches.values(), key=len)
        error = jsonschema.exceptions.best_match(nearest)
    return error


def _describe(error: jsonschema.ValidationError, param: str | None) -> str:
    """Say what is wrong without echoing the value (it may be a password or a key)."""
    where = param or "body"
    rule, limit = error.validator, error.validator_value
    phrases = {
        "minLength": f"must be at least {limit} characters", "maxLength": f"must be at most {limit} characters",
        "pattern": "has the wrong format", "type": f"must be of type {limit}", "enum": f"must be one of {limit}",
        "minimum": f"must be >= {limit}", "maximum": f"must be <= {limit}", "minItems": f"needs {limit}+ items",
        "maxItems": f"allows at most {limit} items", "format": f"must be a valid {limit}",
    }
    if rule in phrases:
        return f"{where} {phrases[rule]}"
    if rule in ("required", "additionalProperties"):
        return error.message[:300]  # names the property, never a value
    return f"{where} is invalid ({rule})"
