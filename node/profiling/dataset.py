"""Profile a dataset file or folder into a JSON-serialisable report (no raw values)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import date, datetime
from pathlib import Path

import polars as pl

from node.profiling import describe, quality
from node.profiling import pii_rules as rules
from node.profiling.columns import ColumnStats, batch_aggregates, is_text
from node.profiling.pii import HIGH_RISK_KINDS, PiiScanner, scans
from node.profiling.sketch import DuplicateRowSketch
from node.profiling.sources import FileHasher, SourceFile, content_hash, discover, iter_batches
from node.profiling.views import TextView, prepare

REPORT_VERSION = 1
# Headers of identifier-like columns: their extremes are real ids, so no min/max.
_IDENTIFIER_HEADER = re.compile(
    r"(?:^|_)(?:id|ids|uuid|guid|key|code|number|no|num|account|zip|postcode|postal)(?:_|$)|id$"
)
WORKERS = max(2, min(8, os.cpu_count() or 2))


class _Profiler:
    """Holds the running state of one dataset profile."""

    def __init__(self, name_list: Iterable[str] | None) -> None:
        self.columns: dict[str, ColumnStats] = {}
        self.scanner = PiiScanner(name_list)
        self.duplicates = DuplicateRowSketch()
        self.rows = 0

    def add_batch(self, batch: pl.DataFrame, pool: Executor) -> None:
        # Each text column is stripped (and reduced to its distinct values) once for both
        # passes. PII column tasks run on the pool while this thread computes the schema
        # aggregates.
        views = _views(batch, pool)
        finish_pii = self.scanner.scan({n: v for n, v in views.items() if scans(batch.schema[n])}, pool)
        text = {n: v for n, v in views.items() if is_text(batch.schema[n])}
        agg = batch_aggregates(text)
        for name in batch.columns:
            if name not in self.columns:
                # A column first seen in a later file was missing from every earlier row.
                self.columns[name] = ColumnStats(name)
                self.columns[name].add_missing(self.rows)
            if name in text:
                self.columns[name].update_text(text[name], agg[name])
            else:
                self.columns[name].update(batch.get_column(name))
        for name, stats in self.columns.items():
            if name not in batch.schema:
                stats.add_missing(batch.height)
        self.duplicates.add(batch.select(sorted(batch.columns)))
        finish_pii()
        self.rows += batch.height


def _views(batch: pl.DataFrame, pool: Executor) -> dict[str, TextView]:
    names = [n for n, dtype in batch.schema.items() if is_text(dtype) or scans(dtype)]
    return dict(zip(names, pool.map(lambda n: prepare(batch.get_column(n)), names), strict=True))


def profile_path(path: str | os.PathLike, *, name_list: Iterable[str] | None = None) -> dict:
    """Profile a CSV, Parquet or JSONL file, or a folder of them.

    Files are streamed in bounded batches; memory does not grow with file size.

    Args:
        path: A ``.csv``, ``.parquet``, ``.jsonl`` or ``.ndjson`` file, or a folder searched
            recursively for such files (other files are ignored).
        name_list: Extra first names to recognise as person names, added to the bundled list.

    Returns:
        The report: a JSON-serialisable dict with ``report_version`` 1 and ``kind``
        ``"dataset"`` holding schema, PII, quality and generated text, and no raw value.

    Raises:
        InvalidInput: The path is missing, unsupported, unreadable or corrupt.
    """
    sources = discover(path)
    profiler = _Profiler(name_list)
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="profile") as pool:
        files = [_profile_file(profiler, source, pool) for source in sources]
    report: dict = {
        "report_version": REPORT_VERSION,
        "kind": "dataset",
        "files": files,
        "content_hash": content_hash([(f["name"], bytes.fromhex(f["sha256"])) for f in files]),
        "size_bytes": sum(f["size_bytes"] for f in files),
        "rows": profiler.rows,
    }
    report.update(_sections(profiler))
    root = Path(path)
    title, text, tags = describe.describe_dataset(report, root.name if root.is_dir() else sources[0].name)
    report.update(title=title, description=text, tags=tags, generated_by=describe.GENERATOR)
    return report


def _profile_file(profiler: _Profiler, source: SourceFile, pool: Executor) -> dict:
    hasher = FileHasher(source.path)
    start = profiler.rows
    for batch in _read_ahead(iter_batches(source)):
        profiler.add_batch(batch, pool)
    return {
        "name": source.name,
        "format": source.format,
        "size_bytes": source.size_bytes,
        "sha256": hasher.digest().hex(),
        "rows": profiler.rows - start,
    }


def _read_ahead(batches: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """Yield the batches while the next one is parsed on another thread.

    Parsing a block would otherwise leave the cores idle between batches; one batch in
    flight bounds the extra memory to one block.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="profile-read") as reader:
        ahead = reader.submit(next, batches, None)
        while (batch := ahead.result()) is not None:
            ahead = reader.submit(next, batches, None)
            yield batch


def _sections(profiler: _Profiler) -> dict:
    scanner, rows = profiler.scanner, profiler.rows
    columns, scored = [], []
    for name, stats in profiler.columns.items():
        verdict = scanner.column_report(name, rows, stats.present)
        columns.append(_column_report(stats, verdict, rows))
        scored.append((stats, _pii_matched(scanner, name, verdict)))
    return {
        "columns": columns,
        "pii": _dataset_pii(profiler, columns),
        "quality": quality.score(scored, rows, profiler.duplicates.duplicate_share()),
    }


def _pii_matched(scanner: PiiScanner, name: str, verdict: dict) -> int | None:
    kind = verdict["kind"]
    if verdict["verdict"] != "pii" or kind == "person_name":
        return None
    return scanner.columns[name].kinds[kind].rows


def _column_report(stats: ColumnStats, pii: dict, rows: int) -> dict:
    kind = stats.dominant_type
    column: dict = {
        "name": stats.name,
        "type": kind,
        "nullable": stats.present < rows,
        "null_share": round((rows - stats.present) / rows, 4) if rows else 0.0,
        "distinct_count": stats.distinct.estimate() if kind != "nested" else None,
        "distinct_exact": stats.distinct.exact,
    }
    # Extremes are raw values: only for numbers and dates, never for PII or id columns.
    private = pii["verdict"] != "none" or bool(_IDENTIFIER_HEADER.search(rules.normalise_header(stats.name)))
    if not private and kind in ("integer", "float") and stats.minimum is not None:
        cast = int if kind == "integer" else float
        column["min"], column["max"] = cast(stats.minimum), cast(stats.maximum)
    elif not private and kind in ("date", "datetime") and stats.date_min is not None:
        column["min"], column["max"] = _iso(stats.date_min), _iso(stats.date_max)
    column["example_format"] = stats.example_format()
    column["free_text"] = stats.is_free_text
    column["pii"] = pii
    return column


def _iso(value: date | datetime) -> str:
    return value.isoformat()


def _dataset_pii(profiler: _Profiler, columns: list[dict]) -> dict:
    rows = profiler.rows
    by_kind: dict[str, dict] = {}
    free_columns = [c["name"] for c in columns if c["free_text"]]
    free_counts: dict[str, int] = {}
    for column in columns:
        for kind, found in column["pii"]["kinds"].items():
            entry = by_kind.setdefault(kind, {"count": 0, "row_share": 0.0, "columns": [], "confidence": 0.0})
            entry["count"] += found["count"]
            entry["columns"].append(column["name"])
            entry["confidence"] = max(entry["confidence"], found["confidence"])
            if column["free_text"]:
                free_counts[kind] = free_counts.get(kind, 0) + found["count"]
    for kind, entry in by_kind.items():
        entry["row_share"] = round(min(profiler.scanner.kind_rows[kind], rows) / rows, 4) if rows else 0.0
    kinds = [k for k in rules.KINDS if k in by_kind]
    free_rows = min(profiler.scanner.free_text_rows, rows)
    return {
        "kinds_detected": kinds,
        "by_kind": {k: by_kind[k] for k in kinds},
        "free_text": {
            "columns": free_columns,
            "by_kind": {k: free_counts[k] for k in rules.KINDS if k in free_counts},
            "rows": free_rows,
            "row_share": round(free_rows / rows, 4) if rows else 0.0,
        },
        "verdict": _verdict(kinds, columns),
    }


def _verdict(kinds: list[str], columns: list[dict]) -> str:
    """``high`` for direct identifiers held as columns or any financial/government id."""
    if not kinds:
        return "none"
    if any(k in HIGH_RISK_KINDS for k in kinds):
        return "high"
    for column in columns:
        if column["pii"]["verdict"] == "pii" and column["pii"]["kind"] != "ip_address":
            return "high"
    return "low"
