"""The OpenAPI 3.1 document, built from the same declarations the resources validate with.

Each resource class carries ``openapi = {"post": op(...), ...}``; ``build_spec`` walks the
route table. A test walks Falcon's router and fails on any route or method missing here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "code": {"type": "string"}, "detail": {"type": "string"}, "param": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
    },
}
ERROR_STATUSES = ("400", "401", "403", "404", "405", "409", "413", "422", "503")
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


def _operation(path: str, method: str, o: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": o.summary, "tags": [o.tag], "operationId": f"{method}_{_slug(path)}"}
    if o.description:
        out["description"] = o.description
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
              for n in _path_names(path)] + list(o.params)
    if params:
        out["parameters"] = params
    if o.body is not None:
        out["requestBody"] = {"required": True, "content": {o.body_media: {"schema": o.body}}}
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
                 "description": "aimarket hub API. Errors are application/problem+json with a stable `code`."},
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
