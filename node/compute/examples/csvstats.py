"""Column statistics of a CSV text: per column the count, empty cells, distinct values, and for
numeric columns min, max, mean and standard deviation. Standard library only; metered in rows."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

MAX_DISTINCT = 10_000


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _column(name: str, cells: list[str]) -> dict[str, Any]:
    filled = [c for c in cells if c.strip() != ""]
    numbers = [n for n in (_number(c) for c in filled) if n is not None]
    distinct = len(set(filled[: MAX_DISTINCT * 10]))
    stats: dict[str, Any] = {"name": name, "count": len(cells), "empty": len(cells) - len(filled),
                             "distinct": distinct, "numeric": bool(filled) and len(numbers) == len(filled)}
    if stats["numeric"]:
        mean = sum(numbers) / len(numbers)
        variance = sum((n - mean) ** 2 for n in numbers) / len(numbers)
        stats.update(min=min(numbers), max=max(numbers), mean=mean, stddev=math.sqrt(variance))
    return stats


def column_stats(value: dict[str, Any]) -> dict[str, Any]:
    """``{"csv": text, "delimiter"?: ","}`` → ``{"rows", "columns": [...]}`` (the first row names the columns)."""
    reader = csv.reader(io.StringIO(value["csv"]), delimiter=value.get("delimiter", ","))
    header = next(reader, [])
    columns: list[list[str]] = [[] for _ in header]
    rows = 0
    for record in reader:
        rows += 1
        for index in range(len(header)):
            columns[index].append(record[index] if index < len(record) else "")
    return {"rows": rows, "columns": [_column(name, cells) for name, cells in zip(header, columns, strict=True)]}
