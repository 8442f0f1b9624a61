"""Profile a model or pipeline from its manifest (JSON or TOML)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from pathlib import Path

from domain.model.compute import parse_manifest
from domain.model.errors import InvalidInput
from node.profiling import describe
from node.profiling.dataset import REPORT_VERSION
from node.profiling.sources import sri

KINDS = ("model", "pipeline")
_TEXT_FIELDS = ("name", "framework", "licence", "metering_unit")
_UNIT = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MANIFEST_BYTES_MAX = 1024 * 1024


def profile_manifest(path: str | os.PathLike) -> dict:
    """Profile a model or pipeline manifest.

    The manifest holds ``name``, ``framework``, ``size_bytes``, ``input_schema``,
    ``output_schema``, ``licence`` (``license`` accepted), ``metering_unit`` (snake_case,
    e.g. ``request`` or ``1k_tokens``), and optionally ``kind`` (``model`` by default, or
    ``pipeline``) and ``description``.

    Args:
        path: A ``.json`` or ``.toml`` manifest file.

    Returns:
        A report with ``kind`` ``"model"`` or ``"pipeline"``, the validated fields, a
        ``content_hash`` over the manifest bytes, and generated title, description and tags.

    Raises:
        InvalidInput: The file is missing, unreadable, not JSON/TOML, or a field is
            missing or invalid (``param`` names the field).
    """
    file = Path(path)
    data = _load(file)
    fields = _validate(data)
    raw = file.read_bytes()
    report: dict = {
        "report_version": REPORT_VERSION,
        "kind": fields.pop("kind"),
        "files": [
            {
                "name": file.name,
                "format": file.suffix.lower().lstrip("."),
                "size_bytes": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        ],
        "content_hash": sri(raw),
        **fields,
    }
    title, text, tags = describe.describe_manifest(report)
    report.update(title=title, description=text, tags=tags, generated_by=describe.GENERATOR)
    return report


def _load(file: Path) -> dict:
    suffix = file.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise InvalidInput(f"manifest must be a .json or .toml file, got {suffix or '(none)'!r}", param="path")
    try:
        if file.stat().st_size > MANIFEST_BYTES_MAX:
            raise InvalidInput("manifest is larger than 1 MiB", param="path")
        text = file.read_text("utf-8")
        data = json.loads(text) if suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read manifest {file.name}: {type(exc).__name__}", param="path") from exc
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"manifest {file.name} is not valid {suffix[1:].upper()}: {exc}", param="path") from exc
    if not isinstance(data, dict):
        raise InvalidInput("manifest must be an object/table at the top level", param="path")
    return data


def _validate(data: dict) -> dict:
    data = dict(data)
    if "licence" not in data and "license" in data:
        data["licence"] = data.pop("license")
    fields: dict = {"kind": data.get("kind", "model")}
    if fields["kind"] not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}", param="kind")
    for key in _TEXT_FIELDS:
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(f"manifest field {key!r} is required and must be a non-empty string", param=key)
        fields[key] = value.strip()
    if not _UNIT.match(fields["metering_unit"]):
        raise InvalidInput("metering_unit must be snake_case, e.g. 'request' or '1k_tokens'", param="metering_unit")
    size = data.get("size_bytes")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput("manifest field 'size_bytes' must be a non-negative integer", param="size_bytes")
    fields["size_bytes"] = size
    for key in ("input_schema", "output_schema"):
        schema = data.get(key)
        if not isinstance(schema, (dict, list)) or not schema:
            raise InvalidInput(f"manifest field {key!r} must be a non-empty object or list", param=key)
        fields[key] = schema
    summary = data.get("description")
    if summary is not None and not isinstance(summary, str):
        raise InvalidInput("manifest field 'description' must be a string", param="description")
    fields["summary"] = (summary or "").strip() or None
    if "entry_point" in data:  # a compute asset: the most one call counts goes into the listing (and the token)
        fields["max_units_per_call"] = parse_manifest(data).metering.max_units_per_call
    return fields
