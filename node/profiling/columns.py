"""Per-column schema statistics accumulated batch by batch.

String cells (all CSV cells, and JSON/Parquet text) are classified with anchored
vectorised patterns into ``integer``, ``float``, ``boolean``, ``date``, ``datetime`` or
``string``; the column's type is the dominant class, and the share of cells that agree
with it is the column's consistency. Nothing here keeps a raw value past the batch except
numeric/date extremes, which the report drops for PII and identifier columns.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import date, datetime

import polars as pl

from node.profiling.sketch import DistinctSketch

NULL_TOKENS = ["", "null", "none", "na", "n/a", "nan", "nil", "#n/a"]
# Case variants listed up front: is_in on raw text avoids lower-casing every cell.
_NULL_VARIANTS = sorted({v for t in NULL_TOKENS for v in (t, t.upper(), t.title(), "N/a", "#N/a")})
TYPES = ("integer", "float", "boolean", "date", "datetime", "string")
SHAPE_SAMPLE = 32
SHAPE_LIMIT = 40
SHAPES_KEPT = 64
_INT = r"^[+-]?\d{1,18}$"
_FLOAT = r"^[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?$|^[+-]?inf(?:inity)?$"
_BOOL = sorted({v for t in ("true", "false", "yes", "no") for v in (t, t.upper(), t.title())})
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_DATETIME = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?$"
# U+FFFD and C0 controls other than tab/newline mean the text was damaged on the way in.
_DAMAGED = "\ufffd|[\x00-\x08\x0b\x0c\x0e-\x1f]"
_UPPER = re.compile(r"[^\W\d_]", re.UNICODE)


def mask_format(value: str, limit: int = SHAPE_LIMIT) -> str:
    """Mask a value to its shape: upper-case letters → A, other letters → a, digits → 9.

    Punctuation and spaces are kept because they carry the format ("999-99-9999").

    Args:
        value: The raw text; it never leaves this function unmasked.
        limit: Characters kept before the shape is cut with an ellipsis.
    """
    out = []
    for char in value[:limit]:
        if char.isdigit():
            out.append("9")
        elif _UPPER.match(char):
            out.append("A" if char.isupper() else "a")
        elif char.isspace():
            out.append(" ")
        else:
            out.append(char)
    return "".join(out) + ("…" if len(value) > limit else "")


def _cell_exprs(name: str) -> list[pl.Expr]:
    # Stage 2 of batch_aggregates: per-cell flags, materialised once so the aggregates
    # below do not re-evaluate shared sub-expressions (nesting them made it 5x slower).
    p = f"{name}\x00"
    text = pl.col(p + "t")
    present = text.is_not_null() & ~text.is_in(_NULL_VARIANTS)
    is_int = text.str.contains(_INT)
    return [
        present.alias(p + "present"),
        is_int.alias(p + "integer"),
        (~is_int & text.str.contains(_FLOAT)).alias(p + "float"),
        text.is_in(_BOOL).alias(p + "boolean"),
        (text.str.contains(_DATE) & text.str.to_date("%Y-%m-%d", strict=False).is_not_null()).alias(p + "date"),
        text.str.contains(_DATETIME).alias(p + "datetime"),
        text.cast(pl.Float64, strict=False).alias(p + "number"),
        text.str.to_date("%Y-%m-%d", strict=False).alias(p + "asdate"),
        text.str.contains(_DAMAGED).alias(p + "damaged"),
    ]


def _agg_exprs(name: str) -> list[pl.Expr]:
    # Stage 3: one aggregate row per column; flags are already plain columns here.
    p = f"{name}\x00"
    present = pl.col(p + "present")
    numeric = present & (pl.col(p + "integer") | pl.col(p + "float"))
    number = pl.col(p + "number").filter(numeric)
    is_date = present & pl.col(p + "date")
    dates = pl.col(p + "asdate").filter(is_date)
    year = dates.dt.year()
    out = [present.sum().alias(p + "present")]
    out += [(present & pl.col(p + kind)).sum().alias(p + kind) for kind in TYPES[:-1]]
    return out + [
        number.filter(number.is_finite()).min().alias(p + "min"),
        number.filter(number.is_finite()).max().alias(p + "max"),
        (~number.is_finite()).sum().alias(p + "nonfinite"),
        dates.min().alias(p + "dmin"),
        dates.max().alias(p + "dmax"),
        ((year < 1900) | (year > 2100)).sum().alias(p + "baddate"),
        (present & pl.col(p + "damaged")).sum().alias(p + "damaged"),
    ]


def _native_type(dtype: pl.DataType) -> str | None:
    if dtype.is_integer():
        return "integer"
    if dtype.is_float() or dtype.is_decimal():
        return "float"
    if dtype == pl.Boolean:
        return "boolean"
    if dtype == pl.Date:
        return "date"
    if dtype == pl.Datetime:
        return "datetime"
    if dtype in (pl.String, pl.Categorical, pl.Enum):
        return None
    return "nested"


class ColumnStats:
    """Accumulates one column's statistics across batches."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows = 0
        self.present = 0
        self.types: Counter[str] = Counter()
        self.nonfinite = 0
        self.baddate = 0
        self.damaged = 0
        self.sampled = 0
        self.chars = 0
        self.spaces = 0
        self.minimum: float | None = None
        self.maximum: float | None = None
        self.date_min: date | None = None
        self.date_max: date | None = None
        self.distinct = DistinctSketch()
        self.shapes: Counter[str] = Counter()

    def add_missing(self, rows: int) -> None:
        """Count ``rows`` rows of a batch (file) that lacks this column as nulls."""
        self.rows += rows

    def update(self, frame: pl.DataFrame, agg: dict[str, object]) -> None:
        """Fold in one batch, given the row of aggregates from :func:`batch_aggregates`."""
        column = frame.get_column(self.name)
        self.rows += frame.height
        native = _native_type(column.dtype)
        if native is None:
            self._update_text(agg)
        else:
            self._update_native(column, native)
        if native == "nested":
            return
        present = column.drop_nulls()
        if native is None:
            present = present.cast(pl.String)
            present = present.filter(~present.str.strip_chars().is_in(_NULL_VARIANTS))
            # Prose detection needs only the shape of the text: a per-batch sample is enough.
            sample = present.head(SHAPE_SAMPLE * 32)
            self.sampled += sample.len()
            self.chars += int(sample.str.len_chars().sum() or 0)
            self.spaces += int(sample.str.count_matches(" ").sum() or 0)
        self.distinct.add(present)
        if len(self.shapes) < SHAPES_KEPT:
            for value in present.head(SHAPE_SAMPLE).cast(pl.String).to_list():
                self.shapes[mask_format(str(value))] += 1

    def _update_text(self, agg: dict[str, object]) -> None:
        def get(key: str) -> int:
            return int(agg.get(f"{self.name}\x00{key}") or 0)

        present = get("present")
        self.present += present
        typed = 0
        for kind in TYPES[:-1]:
            self.types[kind] += get(kind)
            typed += get(kind)
        self.types["string"] += max(present - typed, 0)
        for attr in ("nonfinite", "baddate", "damaged"):
            setattr(self, attr, getattr(self, attr) + get(attr))
        p = f"{self.name}\x00"
        self._extend(agg.get(p + "min"), agg.get(p + "max"), agg.get(p + "dmin"), agg.get(p + "dmax"))

    def _update_native(self, column: pl.Series, native: str) -> None:
        present = column.len() - column.null_count()
        self.present += present
        self.types[native] += present
        if native in ("integer", "float"):
            numbers = column.cast(pl.Float64)
            finite = numbers.filter(numbers.is_finite())
            self.nonfinite += present - finite.len()
            self._extend(finite.min(), finite.max(), None, None)
        elif native in ("date", "datetime"):
            dates = column.cast(pl.Date)
            self._extend(None, None, dates.min(), dates.max())

    def _extend(self, lo: object, hi: object, dlo: object, dhi: object) -> None:
        if isinstance(lo, (int, float)) and not math.isnan(lo):
            self.minimum = lo if self.minimum is None else min(self.minimum, lo)
        if isinstance(hi, (int, float)) and not math.isnan(hi):
            self.maximum = hi if self.maximum is None else max(self.maximum, hi)
        if isinstance(dlo, (date, datetime)):
            self.date_min = dlo if self.date_min is None else min(self.date_min, dlo)
        if isinstance(dhi, (date, datetime)):
            self.date_max = dhi if self.date_max is None else max(self.date_max, dhi)

    @property
    def dominant_type(self) -> str:
        """The most common cell type; integers count towards a float majority."""
        if not self.types:
            return "string"
        counts = Counter(self.types)
        if counts["float"] and counts["float"] + counts["integer"] > max(counts.values()):
            return "float"
        return max(sorted(counts), key=lambda kind: counts[kind])

    def consistent_cells(self) -> int:
        """Present cells whose type agrees with the dominant type."""
        kind = self.dominant_type
        if kind == "float":
            return self.types["float"] + self.types["integer"]
        if kind == "datetime":
            return self.types["datetime"] + self.types["date"]
        return self.types[kind]

    @property
    def mean_length(self) -> float:
        """Mean character length of sampled present text cells."""
        return self.chars / self.sampled if self.sampled else 0.0

    @property
    def is_free_text(self) -> bool:
        """Whether the column holds prose rather than single values."""
        words = self.spaces / self.sampled if self.sampled else 0.0
        return self.dominant_type == "string" and self.mean_length >= 25 and words >= 3

    def example_format(self) -> str | None:
        """The most common masked shape among sampled cells."""
        if not self.shapes:
            return None
        return sorted(self.shapes.items(), key=lambda item: (-item[1], item[0]))[0][0]


def batch_aggregates(frame: pl.DataFrame) -> dict[str, object]:
    """Compute the text aggregates of every text column of ``frame``.

    Three stages in one lazy query: strip each cell, compute per-cell flags, aggregate.
    Each stage's expressions run in parallel across columns.
    """
    names = [name for name, dtype in frame.schema.items() if _native_type(dtype) is None]
    if not names:
        return {}
    stripped = [pl.col(n).cast(pl.String).str.strip_chars().alias(f"{n}\x00t") for n in names]
    query = (
        frame.lazy()
        .select(stripped)
        .select([e for n in names for e in _cell_exprs(n)])
        .select([e for n in names for e in _agg_exprs(n)])
    )
    return query.collect(engine="in-memory").row(0, named=True)
