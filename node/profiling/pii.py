"""PII detection per column and in free text, accumulated batch by batch.

Per column and kind we count candidates (pattern matches), valid candidates, and rows with
a valid one. A kind is accepted for a column by majority vote: at least half of its
candidates must validate, which drops checksum coincidences such as the ~10 % of random
16-digit ids that pass Luhn. Only counts leave this module, never a matched value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import polars as pl

from node.profiling import pii_rules as rules
from node.profiling.views import TextView, union_count

CHECK_BUDGET_PER_COLUMN = 2048  # distinct values validated in Python per column and kind
CHECK_BUDGET_PER_BATCH = 256
SAMPLE_ROWS = 1000  # cells per batch used to classify a column (prose? textual?)
HIGH_RISK_KINDS = ("payment_card", "iban", "national_id")
_KIND = rules.classify(pl.col("c")).alias("kind")  # built once, not per column and batch


@dataclass
class KindStats:
    """Counters for one PII kind in one column."""

    candidates: int = 0
    valid: int = 0
    rows: int = 0
    checked: int = 0

    def accepted(self) -> bool:
        """Majority vote: most candidates validated (and at least one did)."""
        return self.valid > 0 and self.valid * 2 >= self.candidates


@dataclass
class ColumnPii:
    """PII counters for one column."""

    name: str
    hints: set[str]
    weak_name: bool
    present: int = 0
    shaped: int = 0
    listed: int = 0
    kinds: dict[str, KindStats] = field(default_factory=lambda: defaultdict(KindStats))
    mentions: KindStats = field(default_factory=KindStats)

    def name_cells_accepted(self, present: int, shaped: int, listed: int) -> bool:
        """Whether cells of this column are person names (given counts to judge)."""
        if not present or shaped * 2 < present:
            return False
        if "person_name" in self.hints:
            return True
        need = 0.2 if self.weak_name else 0.3
        return listed >= need * present


class PiiScanner:
    """Scans batches for PII and produces the report sections."""

    def __init__(self, extra_names: Iterable[str] | None = None) -> None:
        self.names = rules.name_list(extra_names)
        self.columns: dict[str, ColumnPii] = {}
        self.kind_rows: dict[str, int] = defaultdict(int)
        self.free_text_rows = 0

    def _column(self, name: str) -> ColumnPii:
        if name not in self.columns:
            hints = rules.header_hint(name)
            self.columns[name] = ColumnPii(name, hints, rules.weak_name_header(name))
        return self.columns[name]

    def scan(self, views: dict[str, TextView], pool: Executor) -> Callable[[], None]:
        """Start scanning one batch, one task per column on ``pool``.

        Args:
            views: The batch's columns to scan (see :func:`scans`), by name.
            pool: Runs the column tasks; polars releases the GIL, so they overlap.

        Returns:
            A function that waits for the tasks and merges their row sets.
        """
        futures = [(view, pool.submit(self._scan_column, self._column(name), view)) for name, view in views.items()]

        def finish() -> None:
            by_kind: dict[str, list[tuple[TextView, pl.Series]]] = defaultdict(list)
            free_rows: list[tuple[TextView, pl.Series]] = []
            for view, future in futures:
                found, free_text = future.result()
                for kind, keys in found.items():
                    by_kind[kind].append((view, keys))
                    if free_text:
                        free_rows.append((view, keys))
            for kind, parts in by_kind.items():
                self.kind_rows[kind] += union_count(parts)
            if free_rows:
                self.free_text_rows += union_count(free_rows)

        return finish

    def _scan_column(self, column: ColumnPii, view: TextView) -> tuple[dict[str, pl.Series], bool]:
        # Results are distinct key indexes (rows, or distinct values: see views.py).
        sample = view.head_text(SAMPLE_ROWS).drop_nulls()
        free_text = _looks_free_text(sample)
        frame = pl.DataFrame({
            "key": pl.int_range(0, view.keys.len(), eager=True, dtype=pl.UInt32),
            "v": view.text,
            "w": view.weights,
        })
        found = self._scan_structured(column, frame, view)
        # Names start with a letter; skip the name scans for numeric, date or code columns.
        if sample.len() and sample.str.contains(r"^\p{L}").mean() >= 0.1:
            # A mention needs "First Last": columns of single words cannot hold one.
            spaced = bool(sample.str.contains(" ", literal=True).mean() >= 0.2)
            names = self._scan_names(column, frame, view, spaced)
            if names is not None and names.len():
                found["person_name"] = names
        return found, free_text

    def _scan_structured(self, column: ColumnPii, frame: pl.DataFrame, view: TextView) -> dict[str, pl.Series]:
        text = pl.col("v")
        # Two filters: the second pattern only runs on cells the first one kept.
        sub = frame.filter(text.str.contains(rules.PREFILTER)).filter(~text.str.contains(rules.NOT_IDENTIFIER))
        if not sub.height:
            return {}
        # One pass of the combined pattern finds candidates of every kind; leftmost-first
        # alternation means digits inside an e-mail or IBAN are not re-read as a card.
        cands = (
            sub.select("key", "w", text.str.extract_all(rules.COMBINED).alias("c"))
            .explode("c")
            .drop_nulls("c")
            .with_columns(_KIND)
            .filter(pl.col("kind").is_not_null())
        )
        found: dict[str, pl.Series] = {}
        for kind, group in cands.group_by("kind", maintain_order=True):
            kind = kind[0]
            if kind == "ip_address":
                group = group.filter(_plausible_ip(group.get_column("c")))
                if not group.height:
                    continue
            stats = column.kinds[kind]
            ok = self._validate(kind, group.get_column("c"), stats)
            weights = group.get_column("w")
            # Each candidate row stands for ``w`` rows: count candidates and matches in rows.
            candidates, valid = int(weights.sum()), int(weights.filter(ok).sum() or 0)
            keys = group.get_column("key").filter(ok).unique()
            stats.candidates += candidates
            stats.valid += valid
            stats.rows += view.count(keys)
            if valid and valid * 2 >= candidates:
                found[kind] = keys
        return found

    @staticmethod
    def _validate(kind: str, cands: pl.Series, stats: KindStats) -> pl.Series:
        if kind in rules.VECTOR_VALIDATORS:
            return rules.VECTOR_VALIDATORS[kind](cands)
        if kind == "ip_address":
            # IPv4 candidates were fully checked by the pattern; only IPv6 needs ipaddress.
            is_v4 = cands.str.contains(".", literal=True)
            if is_v4.all():
                return is_v4
            ok = is_v4.clone()
            v6 = PiiScanner._validate_python(kind, cands.filter(~is_v4), stats)
            return ok.scatter((~is_v4).arg_true(), v6)
        return PiiScanner._validate_python(kind, cands, stats)

    @staticmethod
    def _validate_python(kind: str, cands: pl.Series, stats: KindStats) -> pl.Series:
        budget = min(CHECK_BUDGET_PER_BATCH, CHECK_BUDGET_PER_COLUMN - stats.checked)
        prior = stats.valid * 2 >= stats.candidates > 0
        ok, checked = rules.validate_sampled(cands, rules.PYTHON_VALIDATORS[kind], budget, prior)
        stats.checked += checked
        return ok

    def _scan_names(
        self, column: ColumnPii, frame: pl.DataFrame, view: TextView, spaced: bool
    ) -> pl.Series | None:
        text = pl.col("v")
        present = int(frame.get_column("w").filter(frame.get_column("v").is_not_null()).sum() or 0)
        # Only name-shaped cells can be listed names: look up first names on those alone.
        named = frame.filter(text.str.contains(rules.NAME_CELL)).select(
            "key",
            "w",
            text.str.extract(r"^(\p{L}+)", 1).str.to_lowercase().is_in(self.names).alias("listed"),
        )
        shaped = int(named.get_column("w").sum() or 0)
        listed = int(named.get_column("w").filter(named.get_column("listed")).sum() or 0)
        column.present += present
        column.shaped += shaped
        column.listed += listed
        if column.name_cells_accepted(present, shaped, listed):
            return named.get_column("key")
        return self._scan_mentions(column, frame, view) if spaced else None

    def _scan_mentions(self, column: ColumnPii, frame: pl.DataFrame, view: TextView) -> pl.Series | None:
        text = pl.col("v")
        runs = (
            frame.filter(text.str.contains(rules.NAME_IN_TEXT))
            .select("key", "w", text.str.extract_all(rules.NAME_IN_TEXT).alias("r"))
            .explode("r")
            .drop_nulls("r")
        )
        if not runs.height:
            return None
        heads = runs.get_column("r").str.to_lowercase().str.replace(r"\s\S+$", "").str.split(" ")
        ok = heads.list.eval(pl.element().is_in(self.names)).list.any()
        weights = runs.get_column("w")
        column.mentions.candidates += int(weights.sum())
        column.mentions.valid += int(weights.filter(ok).sum() or 0)
        keys = runs.get_column("key").filter(ok).unique()
        column.mentions.rows += view.count(keys)
        return keys

    def column_report(self, name: str, total_rows: int, present: int) -> dict:
        """The ``pii`` verdict of one column (no values, counts only)."""
        column = self.columns.get(name)
        kinds = self._accepted(column) if column else {}
        report: dict = {"verdict": "none", "kind": None, "confidence": 0.0, "kinds": {}}
        for kind, stats in kinds.items():
            report["kinds"][kind] = {
                "count": stats.valid,
                "row_share": _share(stats.rows, total_rows),
                "confidence": _confidence(column, kind, stats, present),
            }
        if kinds:
            kind = max(kinds, key=lambda k: (kinds[k].rows, -rules.KINDS.index(k)))
            dominant = kinds[kind].rows * 2 >= present > 0
            report.update(
                verdict="pii" if dominant else "contains_pii",
                kind=kind,
                confidence=report["kinds"][kind]["confidence"],
            )
        return report

    def _accepted(self, column: ColumnPii) -> dict[str, KindStats]:
        kinds = {k: s for k, s in column.kinds.items() if s.accepted()}
        if column.name_cells_accepted(column.present, column.shaped, column.listed):
            kinds["person_name"] = KindStats(column.shaped, column.shaped, column.shaped)
        elif column.mentions.valid:
            kinds["person_name"] = column.mentions
        return {k: kinds[k] for k in rules.KINDS if k in kinds}


def scans(dtype: pl.DataType) -> bool:
    """Whether columns of this type are scanned for PII (text, integers, categories)."""
    return dtype == pl.String or dtype.is_integer() or dtype == pl.Categorical


def _looks_free_text(sample: pl.Series) -> bool:
    """Prose: at least 25 characters and three spaces per cell on average."""
    if not sample.len():
        return False
    return bool(sample.str.len_chars().mean() >= 25 and sample.str.count_matches(" ").mean() >= 3)


def _plausible_ip(cands: pl.Series) -> pl.Series:
    """Which IP candidates are worth validating (dotted ones always)."""
    dotted = cands.str.contains(".", literal=True)
    rest = (~dotted).arg_true()
    if not rest.len():
        return dotted
    # Clock times ("12:30:45") and C++ scopes ("std::") match the loose IPv6 pattern; the
    # checks run on the undotted candidates only, as most candidates are IPv4.
    v6 = cands.gather(rest)
    shaped = v6.str.contains("::", literal=True) | (v6.str.count_matches(":", literal=True) == 7)
    ok = shaped & ((v6.str.count_matches(r"[0-9A-Fa-f]+") >= 3) | (v6 == "::1"))
    return dotted.scatter(rest, ok)


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _confidence(column: ColumnPii, kind: str, stats: KindStats, present: int) -> float:
    """Blend of precision (validated/candidates) and coverage, plus a header bonus."""
    precision = stats.valid / stats.candidates if stats.candidates else 0.0
    if kind == "person_name" and stats is not column.mentions and "person_name" not in column.hints:
        precision = column.listed / column.shaped if column.shaped else 0.0
    coverage = min(1.0, 2 * stats.rows / present) if present else 0.0
    bonus = 0.1 if kind in column.hints else 0.0
    return round(min(0.99, 0.5 * precision + 0.5 * coverage + bonus), 2)
