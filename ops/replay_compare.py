"""Comparing a replayed read model with the live one, table by table (``ops.audit_replay``).

First a checksum per table: the count of rows and an order-independent digest (the sum
modulo 2**256 of each row's SHA-256, so neither row order nor the engine's physical layout
matters and a duplicated row is not cancelled out). Only a table whose checksum differs is
read a second time, keyed by its primary key, to name the rows: missing (the log gives the
row, live lacks it), extra (live holds a row the log does not give) and changed (with the
columns that differ and both values).

What is excluded, and why, is declared here and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ops.replay_store import Snapshot, _ident

#: Columns that are legitimately local to one store: they differ between two correct rebuilds.
EXCLUDED_COLUMNS: dict[tuple[str, str], str] = {
    ("search_listings", "seq"): "a change counter for query processes: the search and trust runners both bump it, "
    "so its values depend on how their batches interleaved, not on the log",
}
#: Tables of a projection's DDL that its handlers never write, so a replay cannot rebuild them.
EXCLUDED_TABLES: dict[str, str] = {
    "audit_tree_heads": "signed by the head signer over the live tree, not by the projection; "
    "'aimarket audit verify' checks every head against the log",
}
#: Keys of tables without a primary key.
KEYS: dict[str, tuple[str, ...]] = {
    "search_fts": ("listing_id",),  # an FTS5 virtual table has none; the projection keeps one row per listing
}
ROWS_SHOWN = 20  # per kind (missing, extra, changed) and table; the rest are counted
VALUE_CHARS = 60


def _norm(value: Any) -> Any:
    """A JSON-able form that is the same for the same stored value on either side."""
    if isinstance(value, bool):
        return int(value)  # SQLite stores booleans as integers
    if isinstance(value, bytes | bytearray | memoryview):
        return "x:" + bytes(value).hex()
    if value is None or isinstance(value, int | float | str):
        return value
    return str(value)


def row_digest(values: Iterable[Any]) -> int:
    text = json.dumps([_norm(v) for v in values], separators=(",", ":"), ensure_ascii=True)
    return int.from_bytes(hashlib.sha256(text.encode("ascii")).digest(), "big")


@dataclass
class TableResult:
    table: str
    equal: bool
    live_rows: int = 0
    replay_rows: int = 0
    details: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        if self.equal:
            return [f"{self.table}: equal ({self.replay_rows} rows)"]
        return [f"{self.table}: DIFFERS (live {self.live_rows} rows, replay {self.replay_rows} rows)",
                *(f"  {d}" for d in self.details)]


def checksum(snap: Snapshot, table: str, columns: list[str]) -> tuple[int, int]:
    """(rows, digest) of ``columns`` of every row."""
    count, total = 0, 0
    for row in snap.stream(f"SELECT {', '.join(map(_ident, columns))} FROM {_ident(table)}"):  # noqa: S608
        count += 1
        total += row_digest(row[c] for c in columns)
    return count, total % (1 << 256)


def compare_table(live: Snapshot, replay: Snapshot, table: str) -> TableResult:
    if table not in live.tables():
        return TableResult(table, False, details=["the table is absent from the live store"])
    columns = [c for c in replay.columns(table) if (table, c) not in EXCLUDED_COLUMNS]
    live_columns = [c for c in live.columns(table) if (table, c) not in EXCLUDED_COLUMNS]
    if sorted(columns) != sorted(live_columns):
        return TableResult(table, False, details=[f"columns differ: live {sorted(live_columns)}, replay {sorted(columns)}"])
    live_sum, replay_sum = checksum(live, table, columns), checksum(replay, table, columns)
    result = TableResult(table, live_sum == replay_sum, live_sum[0], replay_sum[0])
    if not result.equal:
        key = list(KEYS.get(table) or replay.primary_key(table) or columns)
        result.details = _differing_rows(live, replay, table, columns, key)
    return result


def _keyed(snap: Snapshot, table: str, columns: list[str], key: list[str]) -> dict[tuple[Any, ...], int]:
    rows: dict[tuple[Any, ...], int] = {}
    for row in snap.stream(f"SELECT {', '.join(map(_ident, columns))} FROM {_ident(table)}"):  # noqa: S608
        rows[tuple(_norm(row[k]) for k in key)] = row_digest(row[c] for c in columns)
    return rows


def _differing_rows(live: Snapshot, replay: Snapshot, table: str, columns: list[str], key: list[str]) -> list[str]:
    ours, theirs = _keyed(replay, table, columns, key), _keyed(live, table, columns, key)
    order = lambda keys: sorted(keys, key=repr)  # noqa: E731 - a stable order for the report
    missing = order(k for k in ours if k not in theirs)
    extra = order(k for k in theirs if k not in ours)
    changed = order(k for k in ours if k in theirs and ours[k] != theirs[k])
    lines = [f"missing {_key_text(key, k)}: in the replay, not in live" for k in missing[:ROWS_SHOWN]]
    lines += [f"extra {_key_text(key, k)}: in live, not in the replay" for k in extra[:ROWS_SHOWN]]
    shown = set(changed[:ROWS_SHOWN])
    live_rows, replay_rows = _rows(live, table, columns, key, shown), _rows(replay, table, columns, key, shown)
    for k in changed[:ROWS_SHOWN]:
        was, now = live_rows.get(k, {}), replay_rows.get(k, {})
        diffs = [f"{c} (live {_show(was.get(c))}, replay {_show(now.get(c))})" for c in columns
                 if _norm(was.get(c)) != _norm(now.get(c))]
        lines.append(f"changed {_key_text(key, k)}: {', '.join(diffs)}")
    for kind, keys in (("missing", missing), ("extra", extra), ("changed", changed)):
        if len(keys) > ROWS_SHOWN:
            lines.append(f"... and {len(keys) - ROWS_SHOWN} more {kind} rows")
    return lines


def _rows(snap: Snapshot, table: str, columns: list[str], key: list[str], wanted: set[tuple[Any, ...]]
          ) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The full rows of some keys, in one pass (keys are compared in their normalised form)."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    if wanted:
        for row in snap.stream(f"SELECT {', '.join(map(_ident, columns))} FROM {_ident(table)}"):  # noqa: S608
            k = tuple(_norm(row[c]) for c in key)
            if k in wanted:
                found[k] = row
    return found


def _key_text(key: list[str], values: tuple[Any, ...]) -> str:
    """The whole key, never shortened: it is how an operator finds the row."""
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in zip(key, values, strict=True))


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(_norm(value))
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…"
