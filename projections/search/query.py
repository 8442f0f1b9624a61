"""Hybrid catalogue search: lexical + semantic, fused, boosted, filtered, paginated.

Ranking (documented in docs/catalogue.md, "Search and ranking"):

* lexical: PostgreSQL ``ts_rank_cd`` over the weighted tsvector (``websearch_to_tsquery``,
  AND semantics) or SQLite FTS5 ``bm25`` (weights title 10, tags 5, description 2, columns
  1), each divided by the best lexical score of the query, so it lies in [0, 1];
* semantic: cosine between the query's embedding and each listing's, over the rows that
  pass the filters (``projections.search.index``), clipped at 0;
* fused = 0.7 · semantic + 0.3 · lexical over the union of the lexical top 200 and the
  semantic top 200;
* score = fused · (0.8 + 0.1 · quality/100 + 0.1 · trust). With no query text (browsing),
  score = 0.5 · quality/100 + 0.5 · trust.

Pages are ordered by (score desc, listing id asc); the opaque cursor carries the last
(score, id) and a fingerprint of the query, so a page boundary never repeats or skips a
listing that was already ranked, and a cursor cannot be reused with other filters.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import numpy as np

from domain.model.errors import InvalidInput
from domain.model.money import check_currency
from domain.model.ports import ViewDB
from projections.search.index import KINDS, SemanticIndex, index_for
from projections.search.projection import shared_embedder

W_SEMANTIC, W_LEXICAL = 0.7, 0.3
POOL = 200
LIMIT_MAX = 100
Q_CHARS_MAX = 300
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_LICENCE = re.compile(r"^[A-Za-z0-9.+-]{1,64}$")
_WORD = re.compile(r"\w+", re.UNICODE)
FILTERS = ("kind", "category", "currency", "licence", "price_min", "price_max", "quality_min", "pii_free",
           "trust_min")


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    try:
        number = int(value) if not isinstance(value, bool) and not isinstance(value, float) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not lo <= number <= hi:
        raise InvalidInput(f"{name} must be an integer within {lo}..{hi}", param=name)
    return number


def _text(value: Any, name: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidInput(f"{name} has the wrong format", param=name)
    return value


def parse_query(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a search request (query string or JSON body) into a normalised dict."""
    q = raw.get("q") or ""
    if not isinstance(q, str) or len(q) > Q_CHARS_MAX:
        raise InvalidInput(f"q must be text of at most {Q_CHARS_MAX} characters", param="q")
    out: dict[str, Any] = {"q": q.strip(), "limit": _int(raw.get("limit", 20), "limit", 1, LIMIT_MAX)}
    if raw.get("kind") is not None:
        if raw["kind"] not in KINDS:
            raise InvalidInput(f"kind must be one of {sorted(KINDS)}", param="kind")
        out["kind"] = raw["kind"]
    if raw.get("category") is not None:
        out["category"] = _text(raw["category"], "category", _SLUG)
    if raw.get("currency") is not None:
        out["currency"] = check_currency(raw["currency"])
    if raw.get("licence") is not None:
        out["licence"] = _text(raw["licence"], "licence", _LICENCE)
    for name, hi in (("price_min", 10**12), ("price_max", 10**12), ("quality_min", 100)):
        if raw.get(name) is not None:
            out[name] = _int(raw[name], name, 0, hi)
    if raw.get("pii_free") is not None:
        flag = raw["pii_free"]
        if flag not in (True, False, "true", "false", "1", "0"):
            raise InvalidInput("pii_free must be true or false", param="pii_free")
        out["pii_free"] = flag in (True, "true", "1")
    if raw.get("trust_min") is not None:
        try:
            trust = float(raw["trust_min"]) if not isinstance(raw["trust_min"], bool) else -1.0
        except (TypeError, ValueError):
            trust = -1.0
        if not 0.0 <= trust <= 1.0:
            raise InvalidInput("trust_min must be a number within 0..1", param="trust_min")
        out["trust_min"] = trust
    out["cursor"] = raw.get("cursor")
    return out


def _fingerprint(query: dict[str, Any]) -> str:
    stable = {k: v for k, v in query.items() if k not in ("cursor", "limit")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def encode_cursor(score: float, listing_id: str, query: dict[str, Any]) -> str:
    raw = json.dumps({"s": score, "i": listing_id, "f": _fingerprint(query)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: Any, query: dict[str, Any]) -> tuple[float, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(str(cursor) + "=" * (-len(str(cursor)) % 4)))
        score, listing_id, fingerprint = float(data["s"]), str(data["i"]), data["f"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise InvalidInput("cursor is not one this API issued", param="cursor") from None
    if fingerprint != _fingerprint(query):
        raise InvalidInput("cursor belongs to another query or filter set", param="cursor")
    return score, listing_id


def _filter_sql(f: dict[str, Any]) -> tuple[str, list[Any]]:
    clauses, params = ["s.status = 'active'"], []
    for name, column, op in (("kind", "kind", "="), ("category", "category", "="), ("currency", "currency", "="),
                             ("licence", "licence", "="), ("price_min", "price_minor", ">="),
                             ("price_max", "price_minor", "<="), ("quality_min", "quality_score", ">="),
                             ("trust_min", "trust_score", ">=")):
        if f.get(name) is not None:
            clauses.append(f"s.{column} {op} ?")
            params.append(f[name])
    if f.get("pii_free"):
        clauses.append("s.pii_free = ?")
        params.append(True)
    return " AND ".join(clauses), params


# ``{where}`` is built from fixed column names with ``?`` placeholders only (``_filter_sql``).
# Ranking reads each candidate's tsvector, so PostgreSQL ranks a bounded set: up to
# LEXICAL_SCAN matches in index order (all of them when the terms are rare, which is when
# the lexical signal matters) plus, separately, the semantic leg's top candidates.
PG_LEXICAL = ("SELECT c.listing_id, ts_rank_cd(c.tsv, websearch_to_tsquery('english', ?)) AS r FROM"
              " (SELECT s.listing_id, s.tsv FROM search_listings s WHERE s.tsv @@ websearch_to_tsquery('english', ?)"
              " AND {where} LIMIT ?) c ORDER BY r DESC LIMIT ?")
PG_LEXICAL_OF = ("SELECT s.listing_id, ts_rank_cd(s.tsv, wq) AS r FROM search_listings s,"
                 " websearch_to_tsquery('english', ?) wq WHERE s.listing_id = ANY(?) AND s.tsv @@ wq")
LEXICAL_SCAN = 1000
# MATCH runs first in a MATERIALIZED CTE: joined filters would otherwise make SQLite scan the table.
SQLITE_LEXICAL = ("WITH m AS MATERIALIZED (SELECT listing_id, bm25(search_fts, 0, 10, 5, 2, 1) AS r FROM search_fts"
                  " WHERE search_fts MATCH ?) SELECT m.listing_id, m.r FROM m JOIN search_listings s"
                  " ON s.listing_id = m.listing_id WHERE {where} ORDER BY m.r LIMIT ?")


def lexical(views: ViewDB, f: dict[str, Any], limit: int = POOL, also: list[str] | None = None) -> dict[str, float]:
    """Listing id -> lexical score in [0, 1] (relative to the query's best match).

    ``also``: ids (the semantic leg's best) whose lexical score is wanted in any case.
    """
    where, params = _filter_sql(f)
    if views.dialect == "postgres":
        rows = views.fetchall(PG_LEXICAL.format(where=where), (f["q"], f["q"], *params, LEXICAL_SCAN, limit))
        raw = {r["listing_id"]: float(r["r"]) for r in rows}
        if also:
            raw.update((r["listing_id"], float(r["r"])) for r in views.fetchall(PG_LEXICAL_OF, (f["q"], list(also))))
    else:
        words = _WORD.findall(f["q"])
        if not words:
            return {}
        match = " ".join('"' + w.replace('"', "") + '"' for w in words[:32])
        rows = views.fetchall(SQLITE_LEXICAL.format(where=where), (match, *params, limit))
        raw = {r["listing_id"]: -float(r["r"]) for r in rows}
    best = max(raw.values(), default=0.0)
    return {k: v / best for k, v in raw.items()} if best > 0 else dict.fromkeys(raw, 0.0)


def _rank(index: SemanticIndex, views: ViewDB, f: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Candidate row numbers and their final scores (unordered)."""
    with index.lock:
        mask = index.mask(f)
        if not f["q"]:
            rows = np.flatnonzero(mask)
            return rows, 0.5 * index.quality[rows].astype(np.float32) / 100.0 + 0.5 * index.trust[rows]
        query_vec = shared_embedder().embed_one(f["q"])
        near, cos = index.nearest(mask, query_vec)
        top = near[np.argpartition(-cos, POOL - 1)[:POOL]] if len(near) > POOL else near
        lex = {index.row_of[i]: s for i, s in lexical(views, f, also=[str(i) for i in index.ids[top]]).items()
               if i in index.row_of}
        lex = {r: s for r, s in lex.items() if mask[r]}
        cand = np.union1d(top, np.fromiter(lex, dtype=np.int64, count=len(lex)))
        cos_c = np.maximum(index.vectors[cand] @ query_vec, 0.0)
        lex_c = np.asarray([lex.get(int(r), 0.0) for r in cand], dtype=np.float32)
        fused = W_SEMANTIC * cos_c + W_LEXICAL * lex_c
        boost = 0.8 + 0.1 * index.quality[cand].astype(np.float32) / 100.0 + 0.1 * index.trust[cand]
        return cand, fused * boost


def search(views: ViewDB, raw: dict[str, Any]) -> dict[str, Any]:
    """Run a search request; returns ``{"items", "next_cursor", "count"}``."""
    f = parse_query(raw)
    index = index_for(views)
    rows, scores = _rank(index, views, f)
    scores = np.round(scores.astype(np.float64), 6)
    ids = index.ids[rows]
    if f.get("cursor"):
        last_score, last_id = decode_cursor(f["cursor"], f)
        keep = (scores < last_score) | ((scores == last_score) & (ids > last_id))
        rows, scores, ids = rows[keep], scores[keep], ids[keep]
    take = min(f["limit"] + 1, len(rows))
    if take < len(rows):
        part = np.argpartition(-scores, take - 1)[:take]
        rows, scores, ids = rows[part], scores[part], ids[part]
    order = np.lexsort((ids, -scores))[: f["limit"] + 1]
    page = [(str(ids[o]), float(scores[o])) for o in order]
    more = len(page) > f["limit"]
    page = page[: f["limit"]]
    items = _cards(views, page)
    cursor = encode_cursor(page[-1][1], page[-1][0], f) if more and page else None
    return {"items": items, "next_cursor": cursor, "count": len(items)}


CARD_COLUMNS = ("listing_id, title, description, kind, category, tags, licence, price_minor, currency,"
                " quality_score, pii_free, trust_score, device_id, account_id, updated_at")


def _cards(views: ViewDB, page: list[tuple[str, float]]) -> list[dict[str, Any]]:
    if not page:
        return []
    marks = ", ".join("?" for _ in page)
    rows = {r["listing_id"]: r for r in views.fetchall(
        f"SELECT {CARD_COLUMNS} FROM search_listings WHERE listing_id IN ({marks})", [i for i, _ in page])}  # noqa: S608
    cards = []
    for listing_id, score in page:
        r = rows.get(listing_id)
        if r is None:  # delisted between ranking and fetching: skip, the next page is still exact
            continue
        cards.append({"id": listing_id, "score": score, "title": r["title"], "description": r["description"][:300],
                      "kind": r["kind"], "category": r["category"], "tags": r["tags"].split(),
                      "licence": r["licence"], "price_minor": int(r["price_minor"]), "currency": r["currency"],
                      "quality_score": int(r["quality_score"]), "pii_free": bool(r["pii_free"]),
                      "trust_score": float(r["trust_score"]), "device_id": r["device_id"],
                      "updated_at": r["updated_at"]})
    return cards


def category_counts(views: ViewDB, kind: str | None = None) -> list[dict[str, Any]]:
    """Active listings per category (and per kind within it), largest first."""
    if kind is not None and kind not in KINDS:
        raise InvalidInput(f"kind must be one of {sorted(KINDS)}", param="kind")
    where, params = ("status = 'active' AND kind = ?", [kind]) if kind else ("status = 'active'", [])
    rows = views.fetchall(f"SELECT category, kind, COUNT(*) AS n FROM search_listings WHERE {where}"  # noqa: S608
                          " GROUP BY category, kind", params)
    by_category: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = by_category.setdefault(r["category"], {"category": r["category"], "count": 0, "by_kind": {}})
        entry["count"] += int(r["n"])
        entry["by_kind"][r["kind"]] = int(r["n"])
    return sorted(by_category.values(), key=lambda e: (-e["count"], e["category"]))


def listing_detail(views: ViewDB, listing_id: str) -> dict[str, Any] | None:
    """One listing as a buyer sees it: schema preview, quality, PII summary, price, seller."""
    r = views.fetchone("SELECT listing_id, status, account_id, device_id, trust_score, doc, published_at, updated_at"
                       " FROM search_listings WHERE listing_id = ?", (listing_id,))
    if r is None:
        return None
    doc = json.loads(r["doc"])
    return {
        "id": r["listing_id"], "status": r["status"], "title": doc["title"], "description": doc.get("description", ""),
        "kind": doc["kind"], "category": doc["category"], "tags": doc.get("tags", []), "licence": doc["licence"],
        "price": {"price_minor": doc["price_minor"], "currency": doc["currency"]},
        "schema_preview": doc.get("columns", []), "rows": doc.get("rows"), "size_bytes": doc.get("size_bytes"),
        "quality": doc.get("quality") or {}, "pii": doc.get("pii") or {}, "content_hash": doc["content_hash"],
        "seller": {"account_id": r["account_id"], "device_id": r["device_id"], "trust_score": float(r["trust_score"])},
        "published_at": r["published_at"], "updated_at": r["updated_at"],
    }
