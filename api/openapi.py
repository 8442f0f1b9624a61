"""The OpenAPI 3.1 document, built from the same declarations the resources validate with.

Each resource class carries ``openapi = {"post": op(...), ...}``; ``build_spec`` walks the
route table. A test walks Falcon's router and fails on any route or method missing here.

The document says what the server accepts (``api.http``, the input rules): every request
string schema carries the text rule (``not`` a control character), integers their 64-bit range, path ids
their shape (``PATH_ID_PATTERNS``: a UUID unless listed), and an operation's body its media
type (anything else is 415). A POST without fields still takes an empty JSON object, the
way nodes already call ``/v1/devices/challenges``; GET takes no body at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from api.http import _UUID_RE, BODY_BYTES_MAX, HEADER_BYTES_MAX, JSON_MEDIA, PATH_ID_PATTERNS, URI_CHARS_MAX
from domain.model.json_input import DEPTH_MAX, INT64_MAX, INT64_MIN

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "code": {"type": "string"}, "detail": {"type": "string"}, "param": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
    },
}
ERROR_STATUSES = ("400", "401", "403", "404", "405", "409", "413", "414", "415", "422", "431", "503")
# The text rule (api.http.check_text) in JSON Schema: no match of a control character class
# anywhere in the string ("not" + "pattern", which generators turn into a narrower alphabet).
# Lone surrogates are in the description only: a class over UTF-16 code units would refuse
# astral characters too.
TEXT_RULE = {"pattern": "[\\u0000-\\u001f]"}
FREE_TEXT_RULE = {"pattern": "[\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f]"}
FREE_TEXT_FIELDS = ("description",)
EMPTY_BODY = {"type": "object", "maxProperties": 0,
              "description": "This operation takes no fields: send no body or an empty JSON object."}
INPUT_RULES = (
    f"Input rules (every operation): a body of at most {BODY_BYTES_MAX} bytes (413 payload_too_large), in the "
    f"documented media type (415 unsupported_media_type); JSON nested at most {DEPTH_MAX} levels (422 "
    "nesting_too_deep); integers are JSON integer literals (1e3 is a number, not an integer) within 64 bits; "
    "every string (body values and member names, query and path values, Authorization, Idempotency-Key, "
    "Stripe-Signature, X-Totp-Code) is valid UTF-8 with no lone surrogate and no C0 control character except "
    "tab, newline and CR in description fields (422 invalid_text); path and query at most "
    f"{URI_CHARS_MAX} characters (414 uri_too_long), header fields at most {HEADER_BYTES_MAX} bytes in total "
    "(431 headers_too_large).")
AUTH_KINDS = {"none": [], "account": ["session", "api_key", "oauth_client"], "device": ["device"],
              "any": ["session", "api_key", "oauth_client", "device"]}


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    auth: str = "none"  # none | account | device | any
    body: dict[str, Any] | None = None
    body_media: str = "application/json"
    responses: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    params: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""


def op(summary: str, tag: str, **kwargs: Any) -> Operation:
    return Operation(summary, tag, **kwargs)


def query_param(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def obj(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    """A closed JSON object schema (unknown fields are refused, so typos surface)."""
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


def open_obj(**props: dict[str, Any]) -> dict[str, Any]:
    """A response object: documented fields, more may be added later."""
    return {"type": "object", "properties": props}


def body_rule(method: str, o: Operation | None) -> tuple[str, bool] | None:
    """What body an operation takes: (media type, required), or None for none at all. The
    server (``api.app.InputGuard``) and the document both read it from here."""
    if o is not None and o.body is not None:
        return o.body_media, True
    if method.lower() in ("post", "put", "patch", "delete"):
        return JSON_MEDIA, False  # an empty JSON object, or nothing (clients send {} out of habit)
    return None


def path_param(name: str) -> dict[str, Any]:
    """A path parameter as the server checks it (``api.http.check_request``)."""
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "not": TEXT_RULE}
    if name.endswith("_id"):
        pattern = PATH_ID_PATTERNS.get(name)
        schema = ({"type": "string", "pattern": pattern} if pattern is not None
                  else {"type": "string", "format": "uuid", "pattern": _UUID_RE})
    return {"name": name, "in": "path", "required": True, "schema": schema}


def documented(schema: Any, name: str | None = None) -> Any:
    """A copy of a request schema with the input rules the server applies to every value
    written in: the text pattern on strings, the 64-bit range on integers."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {prop: documented(sub, prop) for prop, sub in value.items()}
        elif key in ("items", "additionalProperties", "propertyNames", "contains", "not"):
            out[key] = documented(value, name if key == "items" else None)
        elif key in ("oneOf", "anyOf", "allOf", "prefixItems"):
            out[key] = [documented(sub, name) for sub in value]
        else:
            out[key] = value
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if "string" in types and not {"enum", "const"} & schema.keys():
        rule = FREE_TEXT_RULE if name in FREE_TEXT_FIELDS else TEXT_RULE
        if types == ["string"] and "not" not in out:
            out["not"] = rule
        else:  # other types pass a "not pattern" by default: say it of strings only
            out["allOf"] = [*out.get("allOf", []), {"not": {"type": "string", **rule}}]
    if "object" in types and out.get("additionalProperties") is not False:
        # An open object: its member names, and any member's text, follow the rule too.
        out.setdefault("propertyNames", {"not": TEXT_RULE})
        if not isinstance(out.get("additionalProperties"), dict):
            text = {"not": {"type": "string", **TEXT_RULE}}
            out["additionalProperties"] = {**text, "items": text}  # a form repeats a name for a list
    if "integer" in types:
        out.setdefault("format", "int64")
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = INT64_MIN
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = INT64_MAX
    return out


def _parameter(param: dict[str, Any]) -> dict[str, Any]:
    return {**param, "schema": documented(param["schema"], param["name"])}


def _operation(path: str, method: str, o: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": o.summary, "tags": [o.tag], "operationId": f"{method}_{_slug(path)}"}
    if o.description:
        out["description"] = o.description
    params = [path_param(n) for n in _path_names(path)] + [_parameter(p) for p in o.params]
    if params:
        out["parameters"] = params
    rule = body_rule(method, o)
    if rule is not None:
        media, required = rule
        schema = documented(o.body) if o.body is not None else EMPTY_BODY
        if media != JSON_MEDIA and schema.get("additionalProperties") is not False:
            # A form carries names and string values only (api.http.check_form).
            schema = {**schema, "additionalProperties": {"type": "string", "not": TEXT_RULE}}
        out["requestBody"] = {"required": required, "content": {media: {"schema": schema}}}
    responses: dict[str, Any] = {}
    for status, schema in (o.responses or {"200": None}).items():
        responses[status] = {"description": f"HTTP {status}"}
        if schema is not None:
            responses[status]["content"] = {"application/json": {"schema": schema}}
    for status in ERROR_STATUSES:
        responses.setdefault(status, {"description": "Problem", "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
    out["responses"] = responses
    if o.auth != "none":
        out["security"] = [{"bearer": []}]
        out["x-credentials"] = AUTH_KINDS[o.auth]
    return out


def _path_names(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]


def _slug(path: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in path).strip("_")


def build_spec(routes: list[tuple[str, object]], *, title: str, version: str, server_url: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, resource in routes:
        for method, operation in getattr(resource, "openapi", {}).items():
            paths.setdefault(path, {})[method] = _operation(path, method, operation)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "aimarket hub API. Errors are application/problem+json with a stable `code`. "
                                + INPUT_RULES},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": {"Problem": PROBLEM_SCHEMA},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A session or OAuth access token (HS256 JWT), an API key (aim_…), "
                               "or a device token (EdDSA JWT signed by the node's key)."}},
        },
    }
