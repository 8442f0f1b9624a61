"""The search read model: one row per listing, a lexical index and a semantic vector.

* PostgreSQL: a ``tsvector`` column weighted A title, B tags, C description, D column names,
  with a GIN index; the vector as ``bytea``.
* SQLite (embedded default): an FTS5 table over the same four fields (bm25 weights 10/5/2/1);
  the vector as a BLOB.

``seq`` is the log position of the row's last change, so a query process can pick up only
what changed since it last looked (``projections.search.index``); it is kept above every
other row's (``projections.trust.next_search_seq``) because the trust projection writes it too.
``trust_score`` is the seller device's current trust score: read from ``trust_scores`` when a
listing is first indexed (the prior 0.5 for a device with no score), then pushed by the trust
projection whenever the device's score changes; either projection rebuilt alone ends in the
same rows.
The embedding is computed here, once per listing change, from the title, tags, description
and column names, truncated to 128 tokens.
"""

from __future__ import annotations

import json
import threading
from functools import singledispatchmethod
from typing import Any

from domain.model.listing import Listing
from domain.model.ports import Tx
from projections.base import Projection
from projections.search import vectors
from projections.search.embedding import Embedder
from projections.trust import SCORES_DDL, device_score, next_search_seq

TRUST_PRIOR = 0.5
EMBED_TOKENS_MAX = 128

_embedder: Embedder | None = None
_embedder_lock = threading.Lock()


def shared_embedder() -> Embedder:
    """The process's one Embedder, built on first use (never at import)."""
    global _embedder
    if _embedder is None:
        with _embedder_lock:
            if _embedder is None:
                _embedder = Embedder(max_seq_length=EMBED_TOKENS_MAX)
    return _embedder


def listing_text(metadata: dict[str, Any]) -> str:
    """The text a listing is embedded from (title first: truncation keeps what matters most)."""
    columns = " ".join(c["name"] for c in metadata.get("columns", []))
    return ". ".join(p for p in (metadata["title"], " ".join(metadata.get("tags", [])),
                                 metadata.get("description", ""), columns) if p)


PG_TSV = ("UPDATE search_listings SET tsv ="
          " setweight(to_tsvector('english', title), 'A') || setweight(to_tsvector('english', tags), 'B') ||"
          " setweight(to_tsvector('english', description), 'C') ||"
          " setweight(to_tsvector('english', columns_text), 'D')")
UPSERT = (
    "INSERT INTO search_listings (listing_id, seq, status, account_id, device_id, title, description, kind,"
    " category, tags, licence, price_minor, currency, quality_score, pii_free, trust_score, columns_text, doc,"
    " vector, published_at, updated_at) VALUES (?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (listing_id) DO UPDATE SET seq = excluded.seq, status = 'active', title = excluded.title,"
    " description = excluded.description, kind = excluded.kind, category = excluded.category, tags = excluded.tags,"
    " licence = excluded.licence, price_minor = excluded.price_minor, currency = excluded.currency,"
    " quality_score = excluded.quality_score, pii_free = excluded.pii_free, columns_text = excluded.columns_text,"
    " doc = excluded.doc, vector = excluded.vector, updated_at = excluded.updated_at"
)


def row_values(listing_id: str, seq: int, owner: dict[str, str], metadata: dict[str, Any], price: tuple[int, str],
               vector: bytes, at: str, trust: float = TRUST_PRIOR) -> tuple[Any, ...]:
    """The UPSERT parameters for one listing (also used by the benchmark's bulk loader)."""
    pii = metadata.get("pii") or {}
    doc = json.dumps({**metadata, "price_minor": price[0], "currency": price[1]}, sort_keys=True)
    return (listing_id, seq, owner["account_id"], owner["device_id"], metadata["title"],
            metadata.get("description", ""), metadata["kind"], metadata["category"], " ".join(metadata.get("tags", [])),
            metadata["licence"], price[0], price[1], int((metadata.get("quality") or {}).get("score", 0)),
            not pii.get("kinds_detected"), trust,
            " ".join(c["name"] for c in metadata.get("columns", [])), doc, vector, at, at)


def ddl_for(dialect: str) -> list[str]:
    blob = "BYTEA" if dialect == "postgres" else "BLOB"
    statements = [
        "CREATE TABLE IF NOT EXISTS search_listings ("
        " listing_id TEXT PRIMARY KEY, seq BIGINT NOT NULL, status TEXT NOT NULL, account_id TEXT NOT NULL,"
        " device_id TEXT NOT NULL, title TEXT NOT NULL, description TEXT NOT NULL, kind TEXT NOT NULL,"
        " category TEXT NOT NULL, tags TEXT NOT NULL, licence TEXT NOT NULL, price_minor BIGINT NOT NULL,"
        " currency TEXT NOT NULL, quality_score INTEGER NOT NULL, pii_free BOOLEAN NOT NULL,"
        f" trust_score REAL NOT NULL, columns_text TEXT NOT NULL, doc TEXT NOT NULL, vector {blob} NOT NULL,"
        " published_at TEXT NOT NULL, updated_at TEXT NOT NULL"
        + (", tsv tsvector)" if dialect == "postgres" else ")"),
        "CREATE INDEX IF NOT EXISTS search_listings_seq ON search_listings (seq)",
        "CREATE INDEX IF NOT EXISTS search_listings_category ON search_listings (status, category)",
        SCORES_DDL,  # the trust projection's table, read here: created by whichever runs first
    ]
    if dialect == "postgres":
        statements.append("CREATE INDEX IF NOT EXISTS search_listings_tsv ON search_listings USING GIN (tsv)")
    else:
        statements.append("CREATE VIRTUAL TABLE IF NOT EXISTS search_fts USING fts5("
                          "listing_id UNINDEXED, title, tags, description, columns, tokenize='porter unicode61')")
    return statements


class SearchProjection(Projection):
    """Listings as the catalogue search sees them."""

    name = "search"
    version = 1
    event_types = (Listing.Published, Listing.Updated, Listing.Delisted)
    tables = ("search_listings", "search_fts")

    def ddl(self, dialect: str) -> list[str]:
        return ddl_for(dialect)

    @singledispatchmethod
    def process(self, event: Any, tx: Tx, position: int) -> None:
        """Ignore other events."""

    @process.register
    def _published(self, event: Listing.Published, tx: Tx, position: int) -> None:
        owner = {"account_id": event.account_id, "device_id": event.device_id}
        self._index(tx, str(event.originator_id), position, owner, event.metadata,
                    (event.price_minor, event.currency), event.timestamp.isoformat())

    @process.register
    def _updated(self, event: Listing.Updated, tx: Tx, position: int) -> None:
        # Owner columns are not touched by the upsert's update branch: the owner never changes.
        owner = {"account_id": "", "device_id": ""}
        self._index(tx, str(event.originator_id), position, owner, event.metadata,
                    (event.price_minor, event.currency), event.timestamp.isoformat())

    @process.register
    def _delisted(self, event: Listing.Delisted, tx: Tx, position: int) -> None:
        listing_id = str(event.originator_id)
        tx.execute("UPDATE search_listings SET status = 'delisted', seq = ?, updated_at = ? WHERE listing_id = ?",
                   (next_search_seq(tx, position), event.timestamp.isoformat(), listing_id))
        if tx.dialect == "sqlite":
            tx.execute("DELETE FROM search_fts WHERE listing_id = ?", (listing_id,))

    def _index(self, tx: Tx, listing_id: str, position: int, owner: dict[str, str], metadata: dict[str, Any],
               price: tuple[int, str], at: str) -> None:
        vector = vectors.to_bytes(shared_embedder().embed_one(listing_text(metadata)))
        device_id = owner["device_id"]
        # The seq lock first, the score after: trust writes scores and listings' copies under the
        # same lock, so a score read once it is held is the latest committed (read committed), and
        # a trust update cannot slip between the read and this row's write.
        seq = next_search_seq(tx, position)
        trust = device_score(tx, device_id) if device_id else None
        tx.execute(UPSERT, row_values(listing_id, seq, owner, metadata, price, vector, at,
                                      TRUST_PRIOR if trust is None else trust))
        if tx.dialect == "postgres":
            tx.execute(PG_TSV + " WHERE listing_id = ?", (listing_id,))
        else:
            tx.execute("DELETE FROM search_fts WHERE listing_id = ?", (listing_id,))
            tx.execute("INSERT INTO search_fts (listing_id, title, tags, description, columns) VALUES (?, ?, ?, ?, ?)",
                       (listing_id, metadata["title"], " ".join(metadata.get("tags", [])),
                        metadata.get("description", ""), " ".join(c["name"] for c in metadata.get("columns", []))))
