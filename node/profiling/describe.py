"""Deterministic title, description and tags built from a profile (``deterministic-v1``).

Only metadata feeds the text: file and column names, types, counts, PII kinds and the
quality score, never a cell value. A local model could later replace this behind the same
function signatures; ``generated_by`` records which generator wrote the text.
"""

from __future__ import annotations

import re

GENERATOR = "deterministic-v1"
COLUMNS_LISTED = 12
TAGS_MAX = 12
_KIND_WORDS = {
    "email": "e-mail addresses",
    "phone": "phone numbers",
    "payment_card": "payment card numbers",
    "iban": "IBANs",
    "national_id": "national identifiers",
    "ip_address": "IP addresses",
    "person_name": "person names",
}
# Column-name keywords that suggest a topic tag; matched on whole underscore-separated words.
_TOPICS = {
    "finance": {"price", "amount", "revenue", "cost", "balance", "currency", "payment", "invoice", "iban"},
    "sales": {"order", "orders", "sku", "product", "quantity", "qty", "customer", "sale", "sales"},
    "geospatial": {"lat", "latitude", "lon", "lng", "longitude", "city", "country", "zip", "postcode"},
    "people": {"name", "email", "phone", "age", "gender", "birth", "dob", "ssn", "surname"},
    "web-analytics": {"ip", "url", "session", "user_agent", "referrer", "click", "page"},
    "health": {"patient", "diagnosis", "icd", "medication", "dose", "hospital"},
}


def humanise(name: str) -> str:
    """Turn a file or folder name into words: ``customer_orders-2024.csv`` → ``Customer orders 2024``."""
    stem = re.sub(r"\.(csv|parquet|jsonl|ndjson|json|toml)$", "", name, flags=re.I)
    words = re.sub(r"[_\-.]+", " ", stem).strip()
    return (words[:1].upper() + words[1:]) if words else "Untitled"


def _rows_text(rows: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if rows >= size:
            return f"{rows / size:.1f}{unit}".replace(".0", "")
    return str(rows)


def describe_dataset(report: dict, display_name: str) -> tuple[str, str, list[str]]:
    """Title, description and tags for a dataset report (sections already filled in)."""
    columns = report["columns"]
    formats = sorted({f["format"] for f in report["files"]})
    title = f"{humanise(display_name)} ({_rows_text(report['rows'])} rows, {len(columns)} columns)"
    listed = ", ".join(f"{c['name']} ({c['type']})" for c in columns[:COLUMNS_LISTED])
    more = f" and {len(columns) - COLUMNS_LISTED} more" if len(columns) > COLUMNS_LISTED else ""
    files = len(report["files"])
    parts = [
        f"Tabular dataset of {report['rows']:,} rows and {len(columns)} columns in "
        f"{'/'.join(f.upper() for f in formats)} format ({files} file{'s' if files != 1 else ''}, "
        f"{report['size_bytes']:,} bytes).",
        f"Columns: {listed}{more}." if columns else "No columns.",
    ]
    kinds = report["pii"]["kinds_detected"]
    if kinds:
        parts.append(
            "Contains personal data (" + ", ".join(_KIND_WORDS[k] for k in kinds) + f"); PII risk {report['pii']['verdict']}."
        )
    else:
        parts.append("No personal data detected.")
    quality = report["quality"]
    comps = ", ".join(f"{k} {v}" for k, v in quality["components"].items())
    parts.append(f"Quality score {quality['score']}/100 ({comps}).")
    return title, " ".join(parts), _dataset_tags(report, formats)


def _dataset_tags(report: dict, formats: list[str]) -> list[str]:
    tags = {"dataset", "tabular", *formats}
    words = set()
    for column in report["columns"]:
        words.update(w for w in re.split(r"[^a-z0-9]+", column["name"].lower()) if w)
        if column["type"] in ("date", "datetime"):
            tags.add("time-series")
    tags.update(topic for topic, keys in _TOPICS.items() if words & keys)
    if report["pii"]["kinds_detected"]:
        tags.add("personal-data")
    if report["pii"]["free_text"]["columns"]:
        tags.add("text")
    rows = report["rows"]
    tags.add("large" if rows >= 10**6 else "medium" if rows >= 10**4 else "small")
    return sorted(tags)[:TAGS_MAX]


def describe_manifest(report: dict) -> tuple[str, str, list[str]]:
    """Title, description and tags for a model or pipeline report."""
    kind = report["kind"]
    title = f"{humanise(report['name'])} ({report['framework']} {kind})"
    inputs = _schema_summary(report["input_schema"])
    outputs = _schema_summary(report["output_schema"])
    parts = [
        f"{kind.capitalize()} built with {report['framework']}, {report['size_bytes']:,} bytes,"
        f" licensed {report['licence']}, metered per {report['metering_unit']}.",
        f"Input: {inputs}. Output: {outputs}.",
    ]
    if report.get("summary"):
        parts.insert(0, report["summary"].rstrip(".") + ".")
    tags = {kind, _slug(report["framework"]), _slug(report["licence"]), f"per-{_slug(report['metering_unit'])}"}
    return title, " ".join(parts), sorted(t for t in tags if t)[:TAGS_MAX]


def _schema_summary(schema: object) -> str:
    if isinstance(schema, dict):
        fields = schema.get("properties", schema)
        if isinstance(fields, dict):
            return ", ".join(str(k) for k in list(fields)[:COLUMNS_LISTED]) or "none"
    if isinstance(schema, list):
        return ", ".join(str(x.get("name", x)) if isinstance(x, dict) else str(x) for x in schema[:COLUMNS_LISTED])
    return str(schema)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
