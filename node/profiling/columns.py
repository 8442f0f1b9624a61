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
TYPES = ("integer", "float", "boolean", "date", "datetime", "string")
SHAPE_SAMPLE = 32
SHAPE_LIMIT = 40
SHAPES_KEPT = 64
_INT = r"^[+-]?\d{1,18}$"
_FLOAT = r"^[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?$|^[+-]?inf(?:inity)?$"
_BOOL = ["true", "false", "yes", "no"]
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


def _text_exprs(name: str) -> list[pl.Expr]:
    # One aggregate row per column per batch; polars evaluates these in parallel.
    text = pl.col(name).cast(pl.String).str.strip_chars()
    lower = text.str.to_lowercase()
    present = text.is_not_null() & ~lower.is_in(NULL_TOKENS)
    is_int = present & text.str.contains(_INT)
    is_float = present & ~is_int & text.str.contains(_FLOAT)
    is_bool = present & lower.is_in(_BOOL)
    as_date = text.str.to_date("%Y-%m-%d", strict=False)
    is_date = present & text.str.contains(_DATE) & as_date.is_not_null()
    is_datetime = present & text.str.contains(_DATETIME)
    number = pl.when(is_int | is_float).then(text.cast(pl.Float64, strict=False))
    finite = number.filter(number.is_finite())
    year = as_date.dt.year()
    p = f"{name}\x00"
    return [
        present.sum().alias(p + "present"),
        is_int.sum().alias(p + "integer"),
        is_float.sum().alias(p + "float"),
        is_bool.sum().alias(p + "boolean"),
        is_date.sum().alias(p + "date"),
        is_datetime.sum().alias(p + "datetime"),
        finite.min().alias(p + "min"),
        finite.max().alias(p + "max"),
        (is_int | is_float).and_(~number.is_finite()).sum().alias(p + "nonfinite"),
        pl.when(is_date).then(as_date).min().alias(p + "dmin"),
        pl.when(is_date).then(as_date).max().alias(p + "dmax"),
        (is_date & ((year < 1900) | (year > 2100))).sum().alias(p + "baddate"),
        (present & text.str.contains(_DAMAGED)).sum().alias(p + "damaged"),
        text.str.len_chars().filter(present).sum().alias(p + "chars"),
        text.str.count_matches(" ").filter(present).sum().alias(p + "spaces"),
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
            present = present.filter(~present.str.strip_chars().str.to_lowercase().is_in(NULL_TOKENS))
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
        for attr in ("nonfinite", "baddate", "damaged", "chars", "spaces"):
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
        """Mean character length of present text cells."""
        return self.chars / self.present if self.present else 0.0

    @property
    def is_free_text(self) -> bool:
        """Whether the column holds prose rather than single values."""
        words = self.spaces / self.present if self.present else 0.0
        return self.dominant_type == "string" and self.mean_length >= 25 and words >= 3

    def example_format(self) -> str | None:
        """The most common masked shape among sampled cells."""
        if not self.shapes:
            return None
        return sorted(self.shapes.items(), key=lambda item: (-item[1], item[0]))[0][0]


def batch_aggregates(frame: pl.DataFrame) -> dict[str, object]:
    """Compute the text aggregates of every text column of ``frame`` in one pass."""
    exprs = []
    for name, dtype in frame.schema.items():
        if _native_type(dtype) is None:
            exprs.extend(_text_exprs(name))
    if not exprs:
        return {}
    return frame.select(exprs).row(0, named=True)
