"""The node's compute assets: a listing id → a checked manifest, in ``<home>/compute.sqlite``.

``aim-node compute register MANIFEST --listing ID`` checks the manifest
(``domain.model.compute.parse_manifest``), that both schemas are valid JSON Schemas (the
dialect their ``$schema`` names, 2020-12 by default; no reference is ever fetched), and that the
``module:function`` entry point imports and is callable, then records the manifest as it was
read (its bytes' SHA-256 too): a later edit of the file changes nothing until it is registered
again. Only registered listings are served.
"""

from __future__ import annotations

import importlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from domain.model.compute import Manifest, parse_manifest
from domain.model.errors import ComputeAssetInvalid, ComputeEntryPointInvalid
from domain.model.jcs import sha256_sri

MAX_MANIFEST_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ComputeAsset:
    """A registered asset: the listing it serves, its manifest and where the manifest came from."""

    listing_id: str
    manifest: Manifest
    manifest_path: str
    manifest_hash: str
    registered_ms: int

    def worker_spec(self) -> dict[str, Any]:
        """What a worker process needs to run it (``node.compute.worker``)."""
        m = self.manifest
        return {"entry_point": m.entry_point, "output_schema": m.output_schema, "pointer": m.metering.pointer,
                "of": m.metering.of, "max_output_bytes": m.max_output_bytes}


def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A validator for ``schema`` in the dialect it names (2020-12 by default)."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def check_schemas(manifest: Manifest) -> None:
    """Raise ComputeAssetInvalid unless both schemas are valid JSON Schemas."""
    for name, schema in (("input_schema", manifest.input_schema), ("output_schema", manifest.output_schema)):
        try:
            validator(schema)
        except jsonschema.SchemaError as exc:
            raise ComputeAssetInvalid(f"{name} is not a valid JSON Schema: {exc.message}", param=name) from exc


def load_entry_point(entry_point: str) -> Any:
    """Import ``module:function`` and return the callable (ComputeEntryPointInvalid otherwise)."""
    module_name, _, function = entry_point.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), function)
    except Exception as exc:
        raise ComputeEntryPointInvalid(f"cannot import {entry_point}: {type(exc).__name__}: {exc}",
                                       param="entry_point") from exc
    if not callable(target):
        raise ComputeEntryPointInvalid(f"{entry_point} is not callable", param="entry_point")
    return target


def read_manifest(path: str | Path) -> tuple[Manifest, bytes]:
    """Read and check a manifest file; returns it and its bytes."""
    file = Path(path)
    try:
        if file.stat().st_size > MAX_MANIFEST_BYTES:
            raise ComputeAssetInvalid("a manifest is at most 1 MiB", param="manifest")
        raw = file.read_bytes()
        data = json.loads(raw)
    except OSError as exc:
        raise ComputeAssetInvalid(f"cannot read manifest {file}: {exc.strerror}", param="manifest") from exc
    except ValueError as exc:
        raise ComputeAssetInvalid(f"manifest {file.name} is not JSON: {exc}", param="manifest") from exc
    manifest = parse_manifest(data)
    check_schemas(manifest)
    return manifest, raw


class Registry:
    """The ``assets`` table of ``<home>/compute.sqlite`` (WAL, ``synchronous=FULL``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS assets (listing_id TEXT PRIMARY KEY, manifest TEXT NOT NULL,"
                         " manifest_path TEXT NOT NULL, manifest_hash TEXT NOT NULL, registered_ms INTEGER NOT NULL)")

    def close(self) -> None:
        self._db.close()

    def register(self, listing_id: str, manifest_path: str | Path, now_ms: int, *,
                 check_import: bool = True) -> ComputeAsset:
        """Check and record the manifest for ``listing_id`` (replacing an earlier one)."""
        manifest, raw = read_manifest(manifest_path)
        if check_import:
            load_entry_point(manifest.entry_point)
        path = str(Path(manifest_path).resolve())
        self._db.execute("INSERT INTO assets (listing_id, manifest, manifest_path, manifest_hash, registered_ms)"
                         " VALUES (?,?,?,?,?) ON CONFLICT (listing_id) DO UPDATE SET manifest = excluded.manifest,"
                         " manifest_path = excluded.manifest_path, manifest_hash = excluded.manifest_hash,"
                         " registered_ms = excluded.registered_ms",
                         (listing_id, raw.decode("utf-8"), path, sha256_sri(raw), now_ms))
        return ComputeAsset(listing_id, manifest, path, sha256_sri(raw), now_ms)

    def assets(self) -> dict[str, ComputeAsset]:
        """Every registered asset by listing id."""
        rows = self._db.execute("SELECT listing_id, manifest, manifest_path, manifest_hash, registered_ms FROM assets")
        return {row[0]: ComputeAsset(row[0], parse_manifest(json.loads(row[1])), row[2], row[3], row[4])
                for row in rows}

    def remove(self, listing_id: str) -> bool:
        return self._db.execute("DELETE FROM assets WHERE listing_id = ?", (listing_id,)).rowcount > 0
