"""Quality score 0–100 from four documented components (see docs/catalogue.md).

* completeness: share of cells that are present (not null, blank or a null token).
* uniqueness: share of rows that are not copies of an earlier row.
* validity: mean over columns of the share of present cells that pass the column's domain
  check (validated PII kind for PII columns, finite numbers, dates in 1900–2100, text
  free of encoding damage).
* consistency: mean over columns of the share of present cells whose type agrees with
  the column's dominant type.
"""

from __future__ import annotations

from node.profiling.columns import ColumnStats

WEIGHTS = {"completeness": 0.30, "uniqueness": 0.20, "validity": 0.30, "consistency": 0.20}


def column_validity(stats: ColumnStats, pii_matched: int | None) -> float:
    """Share (0..1) of the column's present cells that pass its domain check.

    Args:
        stats: The column's statistics.
        pii_matched: For a column that is mostly one structured PII kind, the number of
            rows holding a valid value of that kind; ``None`` otherwise.
    """
    if not stats.present:
        return 1.0
    invalid = stats.nonfinite + stats.baddate + stats.damaged
    if pii_matched is not None:
        # The column is mostly this kind, so a cell that does not validate as it is wrong.
        invalid += max(stats.present - pii_matched, 0)
    return max(0.0, 1.0 - invalid / stats.present)


def column_consistency(stats: ColumnStats) -> float:
    """Share (0..1) of present cells whose type matches the dominant type."""
    return stats.consistent_cells() / stats.present if stats.present else 1.0


def score(columns: list[tuple[ColumnStats, int | None]], rows: int, duplicate_share: float) -> dict:
    """Compute the quality section of the report.

    Args:
        columns: Each column's statistics with its PII match count (see
            :func:`column_validity`).
        rows: Total rows in the dataset.
        duplicate_share: Estimated share of duplicate rows (0..1).

    Returns:
        ``{"score", "components", "weights"}`` with integer 0–100 values.
    """
    cells = rows * len(columns)
    present = sum(stats.present for stats, _ in columns)
    used = [(stats, pii) for stats, pii in columns if stats.present]
    parts = {
        "completeness": present / cells if cells else 1.0,
        "uniqueness": 1.0 - duplicate_share,
        "validity": _mean([column_validity(s, p) for s, p in used]),
        "consistency": _mean([column_consistency(s) for s, _ in used]),
    }
    total = sum(WEIGHTS[name] * value for name, value in parts.items())
    return {
        "score": round(100 * total),
        "components": {name: round(100 * value) for name, value in parts.items()},
        "weights": dict(WEIGHTS),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 1.0
