"""Bounded-memory counting of distinct values and duplicate rows.

Both use adaptive hash sampling (Wegman's "distinct sampling"): keep only hashes whose
low ``level`` bits are zero, and raise ``level`` (halving the sample) whenever the sample
outgrows its cap. Every copy of a value shares a hash, so a value is either fully in the
sample or fully out of it: distinct counts scale by ``2**level`` and duplicate shares
measured in the sample are unbiased. Below the cap both are exact.

The final level is the lowest one whose sample of *all* the data fits the cap (the
sample at a fixed level only grows), so the result does not depend on how the data was
batched. That lets both sketches buffer batches and merge them in bulk.
"""

from __future__ import annotations

import polars as pl

DISTINCT_CAP = 16_384
ROWS_CAP = 262_144
SEED = 0x5EED


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
        self._hashes = pl.Series("h", [], dtype=pl.UInt64)
        self._pending: list[pl.Series] = []
        self._pending_len = 0

    def add(self, values: pl.Series) -> None:
        """Add a batch of values; nulls are ignored."""
        self.add_hashes(values.drop_nulls().hash(seed=SEED))

    def add_hashes(self, hashes: pl.Series) -> None:
        """Add the hashes (``Series.hash(seed=SEED)``) of a batch of non-null values."""
        hashes = _sampled(hashes, self.level).rename("h")
        self._pending.append(hashes)
        self._pending_len += hashes.len()
        if self._pending_len >= 4 * self.cap:
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        self._hashes = pl.concat([self._hashes, *self._pending]).unique()
        self._pending, self._pending_len = [], 0
        while self._hashes.len() > self.cap:
            self.level += 1
            self._hashes = _sampled(self._hashes, self.level)

    @property
    def hashes(self) -> pl.Series:
        """The sampled distinct hashes."""
        self._merge()
        return self._hashes

    def estimate(self) -> int:
        """Estimated number of distinct non-null values."""
        return self.hashes.len() << self.level

    @property
    def exact(self) -> bool:
        """Whether the estimate is an exact count."""
        self._merge()
        return self.level == 0


class DuplicateRowSketch:
    """Estimated share of rows that repeat an earlier row."""

    def __init__(self, cap: int = ROWS_CAP) -> None:
        self.cap = cap
        self.level = 0
        self._counts = pl.DataFrame(schema={"h": pl.UInt64, "n": pl.UInt32})
        # Sampled row hashes not yet merged: re-grouping the whole sample for every
        # batch cost more than hashing the rows did.
        self._pending: list[pl.Series] = []
        self._pending_rows = 0

    def add(self, frame: pl.DataFrame) -> None:
        """Add a batch of rows (columns in a stable order)."""
        hashes = _sampled(frame.hash_rows(seed=SEED).rename("h"), self.level)
        self._pending.append(hashes)
        self._pending_rows += hashes.len()
        if self._pending_rows >= 2 * self.cap:
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        batch = pl.concat(self._pending).to_frame().group_by("h").agg(pl.len().cast(pl.UInt32).alias("n"))
        self._pending, self._pending_rows = [], 0
        merged = pl.concat([self._counts, batch])
        self._counts = merged.group_by("h").agg(pl.col("n").sum())
        while self._counts.height > self.cap:
            self.level += 1
            self._counts = self._counts.filter((pl.col("h") & _mask(self.level)) == 0)

    @property
    def counts(self) -> pl.DataFrame:
        """Sampled row hashes ``h`` with their row counts ``n``."""
        self._merge()
        return self._counts

    def duplicate_share(self) -> float:
        """Share of rows (0..1) that are copies of another row."""
        counts = self.counts
        rows = int(counts["n"].sum()) if counts.height else 0
        if rows == 0:
            return 0.0
        return 1.0 - counts.height / rows
