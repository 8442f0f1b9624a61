"""Every PostgreSQL advisory lock key is its own: two locks sharing a key serialise work that
has nothing in common (head signing once waited on every search and trust commit)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEY = re.compile(r"^([A-Z_]*LOCK_KEY) = ([0-9_]+)", re.MULTILINE)


def test_advisory_lock_keys_are_distinct() -> None:
    seen: dict[int, str] = {}
    for folder in ("domain", "projections", "workers", "api", "ops", "node"):
        for path in (ROOT / folder).rglob("*.py"):
            for name, value in KEY.findall(path.read_text()):
                key = int(value.replace("_", ""))
                where = f"{path.relative_to(ROOT)}:{name}"
                assert key not in seen, f"{where} reuses the advisory lock key of {seen[key]}"
                seen[key] = where
    assert len(seen) >= 4  # the scan finds the keys (schema, DDL, search seq, tree heads)
