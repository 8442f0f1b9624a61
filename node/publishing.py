"""From a local profile report to a signed listing credential (metadata only), and the delivery
registry entry for the file behind it.

The report never holds a raw cell value, and this module keeps only what the hub's closed
schema (``domain.model.listing_schema``) allows: titles, tags, column names and types, masked
shapes, counts and shares, PII *kinds*, quality scores, the content hash and size. Column
``min``/``max`` are dropped (they are real values), as is anything the schema does not name.

With a file to deliver, :func:`delivery_commitment` cuts it into blocks and the listing carries
``delivery: {object_hash, size_bytes, blocks}`` inside the signed credential; after the hub
accepts the listing, :func:`register_object` records listing id → file, folder and block hashes
in ``<home>/delivery.sqlite``: the only files ``aim-node serve`` will send.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from domain.model.blocks import DEFAULT_BLOCK_SIZE, BlockCommitment, check_block_size
from domain.model.errors import InvalidInput
from domain.model.keys import SigningKey
from domain.model.listing_schema import EXAMPLE_FORMAT, PII_KINDS, unsigned_credential
from domain.model.vc import sign_credential, xsd_datetime

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_MASKED = re.compile(EXAMPLE_FORMAT["pattern"])
_COLUMNS_MAX = 200


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", str(text).lower()).strip("-")[:40]


def _column(col: dict[str, Any]) -> dict[str, Any]:
    pii = col.get("pii") or {}
    shape = col.get("example_format")
    if isinstance(shape, str):
        shape = shape[:64]
        if not _MASKED.match(shape):
            shape = None  # not provably masked: leave it out rather than risk a value
    out: dict[str, Any] = {"name": str(col["name"])[:128], "type": _slug(col.get("type", "unknown"))[:32] or "unknown",
                           "example_format": shape, "pii_kind": pii.get("kind") if pii.get("kind") in PII_KINDS
                           and pii.get("verdict") != "none" else None}
    for name in ("nullable", "free_text"):
        if isinstance(col.get(name), bool):
            out[name] = col[name]
    if isinstance(col.get("null_share"), (int, float)):
        out["null_share"] = min(1.0, max(0.0, float(col["null_share"])))
    if isinstance(col.get("distinct_count"), int):
        out["distinct_count"] = col["distinct_count"]
    return out


def _pii(report: dict[str, Any]) -> dict[str, Any]:
    pii = report.get("pii") or {}
    kinds = [k for k in pii.get("kinds_detected", []) if k in PII_KINDS]
    by_kind = {k: {"count": int(v.get("count", 0)), "row_share": min(1.0, float(v.get("row_share", 0.0))),
                   "columns": [str(c)[:128] for c in v.get("columns", [])][:_COLUMNS_MAX]}
               for k, v in (pii.get("by_kind") or {}).items() if k in PII_KINDS}
    return {"verdict": _slug(pii.get("verdict", "none")).replace("-", "_")[:20] or "none",
            "kinds_detected": kinds, "by_kind": by_kind}


def _quality(report: dict[str, Any]) -> dict[str, Any]:
    quality = report.get("quality") or {}
    components = {str(k): max(0, min(100, round(float(v)))) for k, v in (quality.get("components") or {}).items()
                  if re.match(r"^[a-z_]{1,32}$", str(k))}
    return {"score": max(0, min(100, round(float(quality.get("score", 0))))), "components": dict(list(components.items())[:8])}


def listing_from_report(report: dict[str, Any], *, price_minor: int, currency: str, licence: str,
                        category: str, delivery: dict[str, Any] | None = None) -> dict[str, Any]:
    """The publishable listing for a profile report (``node.profiling`` dataset or manifest).

    Args:
        report: The profile report.
        price_minor: Price in minor units of ``currency`` (e.g. cents).
        currency: Currency or token code (``USD``, ``USDC``…).
        licence: Licence identifier, e.g. ``CC-BY-4.0``.
        category: Category slug, e.g. ``health``.
        delivery: The file's :func:`delivery_commitment`, when the node delivers it.
    """
    tags = [t for t in dict.fromkeys(_slug(t) for t in report.get("tags", [])) if _SLUG.match(t)][:20]
    listing: dict[str, Any] = {
        "title": str(report.get("title") or "untitled")[:200], "description": str(report.get("description", ""))[:4000],
        "kind": report.get("kind", "dataset"), "category": _slug(category), "tags": tags, "licence": licence,
        "price_minor": price_minor, "currency": currency, "content_hash": report["content_hash"],
        "size_bytes": int(report.get("size_bytes") or 0), "rows": report.get("rows"),
        "columns": [_column(c) for c in report.get("columns", [])[:_COLUMNS_MAX]],
        "pii": _pii(report), "quality": _quality(report),
        "report_version": int(report.get("report_version", 0)),
    }
    for name in ("framework", "metering_unit"):
        if isinstance(report.get(name), str):
            listing[name] = report[name][:64]
    most = report.get("max_units_per_call")
    if isinstance(most, int) and not isinstance(most, bool) and 1 <= most <= 2**31:
        listing["max_units_per_call"] = most
    if delivery is not None:
        listing["delivery"] = delivery
    return listing


def _regular_file(path: str | os.PathLike[str]) -> Path:
    real = Path(os.path.realpath(path))
    if not stat.S_ISREG(os.stat(real).st_mode):
        raise InvalidInput(f"{path} is not a regular file; deliver one file (an archive for a folder)")
    return real


def file_blocks(path: str | os.PathLike[str], block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[int, str, list[bytes]]:
    """``(size_bytes, object_hash, block hashes)`` of a file, read one block at a time."""
    check_block_size(block_size)
    whole, hashes, size = hashlib.sha256(), [], 0
    with open(_regular_file(path), "rb") as handle:
        while True:
            block = handle.read(block_size)
            if not block and hashes:
                break
            whole.update(block)
            hashes.append(hashlib.sha256(block).digest())
            size += len(block)
            if len(block) < block_size:
                break
    return size, "sha256-" + base64.b64encode(whole.digest()).decode("ascii"), hashes


def delivery_commitment(path: str | os.PathLike[str], block_size: int = DEFAULT_BLOCK_SIZE) -> dict[str, Any]:
    """The listing's ``delivery`` field for a file: object hash, size and block commitment."""
    size, object_hash, hashes = file_blocks(path, block_size)
    blocks = BlockCommitment.build(size, block_size, hashes)
    return {"object_hash": object_hash, "size_bytes": size, "blocks": blocks.to_json()}


def register_object(home: str | os.PathLike[str], listing_id: str, path: str | os.PathLike[str], *,
                    block_size: int = DEFAULT_BLOCK_SIZE, root: str | os.PathLike[str] | None = None,
                    expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register ``path`` as the object served for ``listing_id`` (symlinks resolved now; the file
    must stay inside ``root``, its folder by default). Returns its delivery commitment, which
    must equal ``expected`` (the signed listing's) when given."""
    from node.delivery.store import DeliveryStore, RegisteredObject

    real = _regular_file(path)
    folder = Path(os.path.realpath(root)) if root is not None else real.parent
    if os.path.commonpath([real, folder]) != str(folder):
        raise InvalidInput(f"{real} is not inside {folder}")
    size, object_hash, hashes = file_blocks(real, block_size)
    commitment = {"object_hash": object_hash, "size_bytes": size,
                  "blocks": BlockCommitment.build(size, block_size, hashes).to_json()}
    if expected is not None and expected != commitment:
        raise InvalidInput("the file is not the one the listing commits to")
    store = DeliveryStore(Path(home) / "delivery.sqlite")
    try:
        store.register(RegisteredObject(listing_id, str(real), str(folder), size, object_hash, block_size, hashes),
                       time.time_ns() // 1_000_000)
    finally:
        store.close()
    return commitment


def _sign(key: SigningKey, subject: dict[str, Any], now: datetime | None) -> dict[str, Any]:
    created = xsd_datetime((now or datetime.now(UTC)).replace(microsecond=0))
    unsigned = unsigned_credential(key.verify_key.did_key, created, subject)
    return sign_credential(unsigned, key, created=created, nonce=secrets.token_urlsafe(24))


def publish_credential(key: SigningKey, listing: dict[str, Any], listing_key: str | None = None,
                       now: datetime | None = None) -> dict[str, Any]:
    """A signed publish credential; the listing key defaults to the content hash."""
    subject = {"action": "publish", "listing_key": listing_key or listing["content_hash"], "listing": listing}
    return _sign(key, subject, now)


def update_credential(key: SigningKey, listing_id: str, listing: dict[str, Any],
                      now: datetime | None = None) -> dict[str, Any]:
    """A signed update credential (the whole listing is replaced)."""
    return _sign(key, {"action": "update", "listing_id": listing_id, "listing": listing}, now)


def delist_credential(key: SigningKey, listing_id: str, reason: str = "", now: datetime | None = None) -> dict[str, Any]:
    """A signed delist credential."""
    subject: dict[str, Any] = {"action": "delist", "listing_id": listing_id}
    if reason:
        subject["reason"] = reason[:200]
    return _sign(key, subject, now)
