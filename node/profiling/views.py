"""One prepared view per text column of a batch, shared by the schema and PII passes.

Every analysis reads the stripped text of each cell. Many columns repeat a few values
(categories, codes, names, canned notes), so when a batch column holds at most
``DISTINCT_SHARE`` distinct values per row, each distinct raw value is analysed once and
its results weighted by the number of rows holding it. Counts, sums and verdicts come
out the same as on the rows (the tests run both paths and compare whole reports): the
regex passes, the costly part of profiling, then run on a fraction of the cells.

A view is addressed by *key*: a key is a row on the row path and a distinct raw value on
the distinct path. ``weights[key]`` is how many rows the key stands for.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from node.profiling.sketch import SEED

DISTINCT_SHARE = 0.5
_PROBE_ROWS = 2048


@dataclass
class TextView:
    """A text column of one batch, ready for analysis.

    Attributes:
        raw: The column as strings, one entry per row (never stripped).
        keys: The raw values analysed: ``raw`` itself, or its distinct values in order
            of first appearance (so "first seen" samples and budgets match the row path).
        text: ``keys`` with surrounding whitespace stripped.
        weights: Rows per key (UInt32; all ones on the row path).
        hashes: Hash of every key (the distinct sketch's hash).
        distinct: Whether keys are distinct values rather than rows.
    """

    raw: pl.Series
    keys: pl.Series
    text: pl.Series
    weights: pl.Series
    hashes: pl.Series
    distinct: bool

    def head_text(self, rows: int) -> pl.Series:
        """Stripped text of the first ``rows`` rows, in row order."""
        if self.distinct:
            return self.raw.head(rows).str.strip_chars()
        return self.text.head(rows)

    def count(self, keys: pl.Series) -> int:
        """Rows held by the given distinct key indexes."""
        if not self.distinct:
            return keys.len()
        return int(self.weights.gather(keys).sum() or 0)

    def row_indexes(self, keys: pl.Series) -> pl.Series:
        """Row indexes (UInt32, ascending) held by the given distinct key indexes."""
        if not self.distinct:
            return keys.cast(pl.UInt32)
        return self.raw.is_in(self.keys.gather(keys).drop_nulls()).arg_true().cast(pl.UInt32)


def prepare(column: pl.Series, share: float | None = None) -> TextView:
    """Build the view of one column (any type that casts to text).

    Args:
        column: The batch's column.
        share: Largest ratio of distinct values to rows for the distinct path (defaults
            to ``DISTINCT_SHARE``; 0 forces the row path, 1 the distinct path).
    """
    raw = column.cast(pl.String)
    hashes = raw.hash(seed=SEED)
    limit = DISTINCT_SHARE if share is None else share
    # The count only chooses the path (hash collisions could only lower it). A column
    # whose first rows are nearly all different skips the full count: the row path.
    probe = hashes.head(_PROBE_ROWS)
    mostly_unique = limit < 0.9 and raw.len() > _PROBE_ROWS and probe.n_unique() > 0.9 * probe.len()
    if raw.len() and not mostly_unique and hashes.n_unique() <= limit * raw.len():
        counts = (
            raw.rename("k")
            .to_frame()
            .with_row_index("first")
            .group_by("k")
            .agg(pl.len().cast(pl.UInt32).alias("n"), pl.col("first").min())
            .sort("first")
        )
        keys = counts.get_column("k")
        return TextView(raw, keys, keys.str.strip_chars(), counts.get_column("n"), keys.hash(seed=SEED), True)
    ones = pl.repeat(1, raw.len(), dtype=pl.UInt32, eager=True)
    return TextView(raw, raw, raw.str.strip_chars(), ones, hashes, False)


def union_count(parts: list[tuple[TextView, pl.Series]]) -> int:
    """Rows holding at least one of the given keys, across the views of one batch."""
    if not parts:
        return 0
    if all(view is parts[0][0] for view, _ in parts):
        view = parts[0][0]
        return view.count(pl.concat([keys for _, keys in parts]).unique())
    return pl.concat([view.row_indexes(keys) for view, keys in parts]).n_unique()
