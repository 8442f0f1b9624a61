"""The compiled validator (fast path) never accepts a body the full JSON Schema validator
refuses, for every request schema the API publishes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import fastjsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import route_table
from api.openapi import build_spec
from api.validation import _UUID_RE, _validators
from domain.model.json_input import StrictValidator


def request_schemas() -> list[dict[str, Any]]:
    # The document only reads each resource's declared operations: no store is needed.
    unwired = SimpleNamespace(market=None, views=None, debit_batcher=None, enqueue_settlement=None,
                              settings=SimpleNamespace(store="", hub_name="", hub_url=""))
    spec = build_spec(route_table(unwired), title="t", version="0", server_url="http://hub.test")
    found = []
    for path in spec["paths"].values():
        for operation in path.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            if "schema" in body:
                found.append(body["schema"])
    return found


SCHEMAS = request_schemas()


def _names(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        out = set(schema.get("properties", {}))
        for value in schema.values():
            out |= _names(value)
        return out
    if isinstance(schema, list):
        return set().union(*(_names(v) for v in schema)) if schema else set()
    return set()


KEYS = sorted(set().union(*(_names(s) for s in SCHEMAS)))
UUIDISH = st.sampled_from(["18d07893-c611-4a48-a6c0-9fade594cc77", "18d07893c6114a48a6c09fade594cc77",
                           "18D07893-C611-4A48-A6C0-9FADE594CC77", "not-a-uuid-at-all-but-36-characters!"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**16), st.floats(allow_nan=False),
                    st.text(max_size=40), UUIDISH, st.just("0x" + "ab" * 65))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=12)


def test_every_request_schema_compiles_on_the_fast_path() -> None:
    assert len(SCHEMAS) > 15
    for schema in SCHEMAS:
        fastjsonschema.compile(schema, formats={"uuid": _UUID_RE})


ACCEPTED: list[int] = []


# Examples grow with the request schemas: each new route makes fewer draws land on a body its
# schema accepts (1,500 with the purchase routes keep the vacuity check's 20 well in reach).
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(data=st.data())
def test_fast_path_accepts_only_what_the_full_validator_accepts(data: st.DataObject) -> None:
    schema = data.draw(st.sampled_from(SCHEMAS))
    own = sorted(schema.get("properties", {})) or KEYS
    body = data.draw(st.dictionaries(st.sampled_from(own), VALUES, max_size=len(own) + 1))
    full, fast = _validators(schema)
    assert fast is not None and isinstance(full, StrictValidator)  # Draft 2020-12, strict integers
    try:
        fast(body)
    except fastjsonschema.JsonSchemaValueException:
        return
    ACCEPTED.append(1)
    assert [e.message for e in full.iter_errors(body)] == [], (schema, body)


def test_the_property_is_not_vacuous() -> None:
    ACCEPTED.clear()
    test_fast_path_accepts_only_what_the_full_validator_accepts()
    assert len(ACCEPTED) >= 20  # the fast path did accept bodies, and each was checked
