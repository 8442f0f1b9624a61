"""Bounded-memory counting of distinct values and duplicate rows.

Both use adaptive hash sampling (Wegman's "distinct sampling"): keep only hashes whose
low ``level`` bits are zero, and raise ``level`` (halving the sample) whenever the sample
outgrows its cap. Every copy of a value shares a hash, so a value is either fully in the
sample or fully out of it: distinct counts scale by ``2**level`` and duplicate shares
measured in the sample are unbiased. Below the cap both are exact.
"""

from __future__ import annotations

import polars as pl

DISTINCT_CAP = 16_384
ROWS_CAP = 262_144
_SEED = 0x5EED


def _mask(level: int) -> int:
    return (1 << level) - 1


def _sampled(hashes: pl.Series, level: int) -> pl.Series:
    if level == 0:
        return hashes
    return hashes.filter((hashes & _mask(level)) == 0)


class DistinctSketch:
    """Approximate distinct count of one column (exact up to ``cap`` values)."""

    def __init__(self, cap: int = DISTINCT_CAP) -> None:
        self.cap = cap
        self.level = 0
        self.hashes = pl.Series("h", [], dtype=pl.UInt64)

    def add(self, values: pl.Series) -> None:
        """Add a batch of values; nulls are ignored."""
        hashes = _sampled(values.drop_nulls().hash(seed=_SEED), self.level)
        self.hashes = pl.concat([self.hashes, hashes.rename("h")]).unique()
        while self.hashes.len() > self.cap:
            self.level += 1
            self.hashes = _sampled(self.hashes, self.level)

    def estimate(self) -> int:
        """Estimated number of distinct non-null values."""
        return self.hashes.len() << self.level

    @property
    def exact(self) -> bool:
        """Whether the estimate is an exact count."""
        return self.level == 0


class DuplicateRowSketch:
    """Estimated share of rows that repeat an earlier row."""

    def __init__(self, cap: int = ROWS_CAP) -> None:
        self.cap = cap
        self.level = 0
        self.counts = pl.DataFrame(schema={"h": pl.UInt64, "n": pl.UInt32})

    def add(self, frame: pl.DataFrame) -> None:
        """Add a batch of rows (columns in a stable order)."""
        hashes = _sampled(frame.hash_rows(seed=_SEED).rename("h"), self.level)
        batch = hashes.to_frame().group_by("h").agg(pl.len().cast(pl.UInt32).alias("n"))
        merged = pl.concat([self.counts, batch])
        self.counts = merged.group_by("h").agg(pl.col("n").sum())
        while self.counts.height > self.cap:
            self.level += 1
            self.counts = self.counts.filter((pl.col("h") & _mask(self.level)) == 0)

    def duplicate_share(self) -> float:
        """Share of rows (0..1) that are copies of another row."""
        rows = int(self.counts["n"].sum()) if self.counts.height else 0
        if rows == 0:
            return 0.0
        return 1.0 - self.counts.height / rows
