"""The in-process semantic index: every listing's vector and filter fields in numpy arrays.

Fetching vectors from SQL on every query would move ~1.5 KB per candidate; instead each
process keeps one copy of the read model's vectors and filterable fields and catches up
from the ``seq`` column (the log position of a row's last change) before each query: an
indexed ``seq > ?`` read that returns nothing when nothing changed. Filters become numpy
masks; cosine is one matrix-vector product over the masked rows.

Memory: 1.5 KB per listing (384 float32), ~150 MB at 100k, ~1.5 GB at 1M per process.
From ``ANN_MIN_ROWS`` listings on, an IVF coarse index (``ivf.py``) narrows an unfiltered or
broadly filtered query to a few per cent of the rows; a filter that leaves at most
``EXACT_MAX_ROWS`` rows is still scored exactly over just those rows.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from domain.model.ports import ViewDB
from projections.search import vectors
from projections.search.embedding import DIM
from projections.search.ivf import Ivf

KINDS = {"dataset": 0, "model": 1, "pipeline": 2}
_FETCH = 20_000
ANN_MIN_ROWS = 200_000
EXACT_MAX_ROWS = 100_000
IVF_LISTS = 512
IVF_PROBES = 24
_COLUMNS = ("listing_id, seq, status, kind, category, currency, licence, price_minor, quality_score, pii_free,"
            " trust_score, vector")


class Codes:
    """Small dictionary encoding of a text field, so filters compare integers."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def code(self, value: str) -> int:
        return self.codes.setdefault(value, len(self.codes))

    def get(self, value: str) -> int:
        return self.codes.get(value, -1)


class SemanticIndex:
    """Vectors and filter columns of one read-model database, for one process."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self.seq = 0
        self.n = 0
        self.row_of: dict[str, int] = {}
        self.ivf: Ivf | None = None
        self.category, self.currency, self.licence = Codes(), Codes(), Codes()
        self._alloc(1024)

    def _alloc(self, capacity: int) -> None:
        def grow(old: np.ndarray | None, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            new = np.zeros(shape, dtype=dtype)
            if old is not None:
                new[: self.n] = old[: self.n]
            return new

        have = self.__dict__.get("vectors")
        self.vectors = grow(have, (capacity, DIM), np.float32)
        for name, dtype in (("active", bool), ("kind", np.int8), ("category_c", np.int32), ("currency_c", np.int32),
                            ("licence_c", np.int32), ("price", np.int64), ("quality", np.int16),
                            ("pii_free", bool), ("trust", np.float32)):
            setattr(self, name, grow(self.__dict__.get(name) if have is not None else None, (capacity,), dtype))
        self.ids = grow(self.__dict__.get("ids") if have is not None else None, (capacity,), "<U36")

    def refresh(self, views: ViewDB) -> None:
        """Apply every read-model change since the last refresh (all of it after a rebuild)."""
        with self.lock:
            head = views.fetchone("SELECT MAX(seq) AS head FROM search_listings")
            head_seq = int((head or {}).get("head") or 0)
            if head_seq < self.seq:  # the read model was rebuilt: start over
                self._reset()
            while head_seq > self.seq:
                rows = views.fetchall(f"SELECT {_COLUMNS} FROM search_listings WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
                                      (self.seq, _FETCH))
                if not rows:
                    break
                self.apply(rows)

    def apply(self, rows: list[dict[str, Any]]) -> None:
        """Insert or replace rows (as read from ``search_listings``)."""
        with self.lock:
            needed = self.n + sum(1 for r in rows if r["listing_id"] not in self.row_of)
            if needed > len(self.ids):
                self._alloc(max(needed, 2 * len(self.ids)))
            moved: list[int] = []  # rows whose vector is new or changed (for the IVF lists)
            for r in rows:
                i = self.row_of.get(r["listing_id"])
                vec = vectors.from_bytes(bytes(r["vector"]), DIM)
                if i is None:
                    i = self.row_of[r["listing_id"]] = self.n
                    self.n += 1
                    self.ids[i] = r["listing_id"]
                    moved.append(i)
                elif not np.array_equal(self.vectors[i], vec):
                    moved.append(i)
                self.vectors[i] = vec
                self.active[i] = r["status"] == "active"
                self.kind[i] = KINDS.get(r["kind"], -1)
                self.category_c[i] = self.category.code(r["category"])
                self.currency_c[i] = self.currency.code(r["currency"])
                self.licence_c[i] = self.licence.code(r["licence"])
                self.price[i], self.quality[i] = r["price_minor"], r["quality_score"]
                self.pii_free[i], self.trust[i] = bool(r["pii_free"]), r["trust_score"]
            self.seq = max(self.seq, max(int(r["seq"]) for r in rows))
            if self.ivf is None and self.n >= ANN_MIN_ROWS:
                self.ivf = Ivf(self.vectors, self.n, IVF_LISTS)
            elif self.ivf is not None and moved:
                where = np.asarray(moved, dtype=np.int64)
                self.ivf.place(where, self.vectors[where])

    def mask(self, f: dict[str, Any]) -> np.ndarray:
        """Rows that are active and pass every filter of ``f`` (see ``query.FILTERS``)."""
        n = self.n
        m = self.active[:n].copy()
        if f.get("kind"):
            m &= self.kind[:n] == KINDS[f["kind"]]
        for name, codes, column in (("category", self.category, self.category_c), ("currency", self.currency,
                                    self.currency_c), ("licence", self.licence, self.licence_c)):
            if f.get(name):
                m &= column[:n] == codes.get(f[name])
        if f.get("price_min") is not None:
            m &= self.price[:n] >= f["price_min"]
        if f.get("price_max") is not None:
            m &= self.price[:n] <= f["price_max"]
        if f.get("quality_min") is not None:
            m &= self.quality[:n] >= f["quality_min"]
        if f.get("pii_free"):
            m &= self.pii_free[:n]
        if f.get("trust_min") is not None:
            m &= self.trust[:n] >= f["trust_min"]
        return m

    def nearest(self, mask: np.ndarray, query_vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows passing ``mask`` worth scoring for ``query_vec``, and their cosines.

        All of them (exact) unless the IVF is built and more than EXACT_MAX_ROWS pass; then
        the rows in the lists nearest to the query (approximate).
        """
        rows = np.flatnonzero(mask)
        if self.ivf is None or len(rows) <= EXACT_MAX_ROWS:
            return rows, self.cosine(rows, query_vec)
        near = self.ivf.rows_near(query_vec, IVF_PROBES)
        near = near[mask[near]]
        return near, self.vectors[near] @ query_vec

    def cosine(self, rows: np.ndarray, query_vec: np.ndarray) -> np.ndarray:
        """Cosine of ``query_vec`` with the given rows (vectors are unit length)."""
        if len(rows) > self.n // 3:
            # A gather of many rows costs more than the full product: compute all, then pick.
            return (self.vectors[: self.n] @ query_vec)[rows]
        return self.vectors[rows] @ query_vec


_INDEXES: weakref.WeakKeyDictionary[ViewDB, SemanticIndex] = weakref.WeakKeyDictionary()
_INDEXES_LOCK = threading.Lock()


def index_for(views: ViewDB) -> SemanticIndex:
    """The process's index of ``views``, caught up with the read model."""
    with _INDEXES_LOCK:
        index = _INDEXES.get(views)
        if index is None:
            index = _INDEXES[views] = SemanticIndex()
    index.refresh(views)
    return index
