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
from node.profiling.views import TextView

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


def _cell_exprs() -> list[pl.Expr]:
    # Stage 2 of batch_aggregates: per-cell flags, materialised once so the aggregates
    # below do not re-evaluate shared sub-expressions (nesting them made it 5x slower).
    text = pl.col("t")
    present = text.is_not_null() & ~text.is_in(_NULL_VARIANTS)
    is_int = text.str.contains(_INT)
    # Parsing dates is the costliest step: parse only cells shaped like one (others null).
    shaped = text.str.contains(_DATE)
    asdate = pl.when(shaped).then(text).str.to_date("%Y-%m-%d", strict=False)
    return [
        pl.col("w"),
        present.alias("present"),
        is_int.alias("integer"),
        (~is_int & text.str.contains(_FLOAT)).alias("float"),
        text.is_in(_BOOL).alias("boolean"),
        (shaped & asdate.is_not_null()).alias("date"),
        text.str.contains(_DATETIME).alias("datetime"),
        text.cast(pl.Float64, strict=False).alias("number"),
        asdate.alias("asdate"),
        text.str.contains(_DAMAGED).alias("damaged"),
    ]


def _agg_exprs() -> list[pl.Expr]:
    # Stage 3: one aggregate row per column; flags are already plain columns here. Each
    # cell stands for ``w`` rows (one on the row path, its row count on the distinct path).
    weight = pl.col("w")
    present = pl.col("present")
    numeric = present & (pl.col("integer") | pl.col("float"))
    number = pl.col("number").filter(numeric)
    is_date = present & pl.col("date")
    dates = pl.col("asdate").filter(is_date)
    year = dates.dt.year()
    out = [weight.filter(present).sum().alias("present")]
    out += [weight.filter(present & pl.col(kind)).sum().alias(kind) for kind in TYPES[:-1]]
    return out + [
        number.filter(number.is_finite()).min().alias("min"),
        number.filter(number.is_finite()).max().alias("max"),
        weight.filter(numeric).filter(~number.is_finite()).sum().alias("nonfinite"),
        dates.min().alias("dmin"),
        dates.max().alias("dmax"),
        weight.filter(is_date).filter((year < 1900) | (year > 2100)).sum().alias("baddate"),
        weight.filter(present & pl.col("damaged")).sum().alias("damaged"),
    ]


# Built once: building ~40 expressions in Python per column and batch held the GIL
# that the PII threads need.
_CELL_EXPRS = _cell_exprs()
_AGG_EXPRS = _agg_exprs()
_SAMPLE_SUMS = [pl.col("s").str.len_chars().sum().alias("c"), pl.col("s").str.count_matches(" ").sum().alias("n")]


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

    def update(self, column: pl.Series) -> None:
        """Fold in one batch of a column the profiler does not type from text."""
        self.rows += column.len()
        native = _native_type(column.dtype)
        self._update_native(column, native)
        if native == "nested":
            return
        present = column.drop_nulls()
        self.distinct.add(present)
        if len(self.shapes) < SHAPES_KEPT:
            for value in present.head(SHAPE_SAMPLE).cast(pl.String).to_list():
                self.shapes[mask_format(str(value))] += 1

    def update_text(self, view: TextView, agg: dict[str, object]) -> None:
        """Fold in one batch of a text column, given its row of :func:`batch_aggregates`."""
        self.rows += view.raw.len()
        self._update_text(agg)
        present = view.keys.is_not_null() & ~view.text.is_in(_NULL_VARIANTS)
        self.distinct.add_hashes(view.hashes.filter(present))
        # Prose detection needs only the shape of the text: a per-batch sample is enough.
        sample = _first_present(view.raw, SHAPE_SAMPLE * 32)
        chars, spaces = sample.to_frame("s").select(_SAMPLE_SUMS).row(0)
        self.sampled += sample.len()
        self.chars += int(chars or 0)
        self.spaces += int(spaces or 0)
        if len(self.shapes) < SHAPES_KEPT:
            for value in sample.head(SHAPE_SAMPLE).to_list():
                self.shapes[mask_format(str(value))] += 1

    def _update_text(self, agg: dict[str, object]) -> None:
        def get(key: str) -> int:
            return int(agg.get(key) or 0)

        present = get("present")
        self.present += present
        typed = 0
        for kind in TYPES[:-1]:
            self.types[kind] += get(kind)
            typed += get(kind)
        self.types["string"] += max(present - typed, 0)
        for attr in ("nonfinite", "baddate", "damaged"):
            setattr(self, attr, getattr(self, attr) + get(attr))
        self._extend(agg.get("min"), agg.get("max"), agg.get("dmin"), agg.get("dmax"))

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


def _first_present(raw: pl.Series, count: int) -> pl.Series:
    """The first ``count`` present cells (raw text, row order), reading only as far as needed."""
    rows = count
    while True:
        head = raw.head(rows)
        present = head.filter(head.is_not_null() & ~head.str.strip_chars().is_in(_NULL_VARIANTS))
        if present.len() >= count or rows >= raw.len():
            return present.head(count)
        rows *= 4


def batch_aggregates(views: dict[str, TextView]) -> dict[str, dict[str, object]]:
    """Compute the text aggregates of every text column of a batch.

    Args:
        views: The batch's text columns (see :func:`is_text`), by name.

    Returns:
        One row of aggregates per column. Three stages per column: per-cell flags on the
        stripped text, then weighted aggregates; the columns' queries run in parallel.
    """
    names = list(views)
    queries = [
        pl.DataFrame({"t": views[n].text, "w": views[n].weights}).lazy().select(_CELL_EXPRS).select(_AGG_EXPRS)
        for n in names
    ]
    frames = pl.collect_all(queries, engine="in-memory")
    return {name: frame.row(0, named=True) for name, frame in zip(names, frames, strict=True)}


def is_text(dtype: pl.DataType) -> bool:
    """Whether cells of this type are typed from their text by the profiler."""
    return _native_type(dtype) is None
