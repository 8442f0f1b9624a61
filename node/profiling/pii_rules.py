"""Patterns, header hints and validators for each PII kind.

Cheap vectorised regexes find candidates; validators then decide. Checksums and
component rules that vectorise well (Luhn, SSN components, e-mail and IPv4 syntax) run in
polars on every candidate and mirror python-stdnum exactly (the tests cross-check them).
Validators that only exist in Python (stdnum's IBAN country formats, phonenumbers,
``ipaddress`` for IPv6) run on a bounded number of distinct candidates per column; the
rest inherit the majority verdict of those checked (see :func:`validate_sampled`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from importlib import resources

import phonenumbers
import polars as pl
from stdnum import iban as stdnum_iban

KINDS = ("email", "phone", "payment_card", "iban", "national_id", "ip_address", "person_name")
DEFAULT_PHONE_REGION = "US"

# A cell can hold a structured identifier only if it has an "@", a "::" or two digits
# close together; most prose and category cells fail this one scan and skip the rest.
PREFILTER = r"@|::|\d[^\d]{0,3}\d"
# Plain short numbers (amounts, counts, small ids) and ISO dates/times cannot be any
# structured kind: cards need 13+ digits and phones without "+" need separators.
NOT_IDENTIFIER = (
    r"^-?\d{1,12}(?:\.\d+)?$"
    r"|^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$"
)

PATTERNS = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}",
    "phone": (
        r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
        r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\b\d{3}[.-]\d{3}[.-]\d{4}\b"
    ),
    "payment_card": r"\b(?:\d[ -]?){12,18}\d\b",
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
    "national_id": r"\b\d{3}-\d{2}-\d{4}\b",
    "ip_address": (
        r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b"
        r"|(?i:[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7})"
    ),
}
STRUCTURED_KINDS = tuple(PATTERNS)
_ORDER = ("email", "iban", "payment_card", "national_id", "phone", "ip_address")
COMBINED = "|".join(f"(?:{PATTERNS[kind]})" for kind in _ORDER)


def classify(candidate: pl.Expr) -> pl.Expr:
    """Which kind's alternative produced a COMBINED match, from the match's own shape."""
    return (
        pl.when(candidate.str.contains("@", literal=True))
        .then(pl.lit("email"))
        .when(candidate.str.contains(r"^[A-Z]{2}\d{2}"))
        .then(pl.lit("iban"))
        .when(candidate.str.contains(r"^[+(]|^\d{3}[.-]\d{3}[.-]\d{4}$"))
        .then(pl.lit("phone"))
        .when(candidate.str.contains(r"^\d{3}-\d{2}-\d{4}$"))
        .then(pl.lit("national_id"))
        .when(candidate.str.contains(r"[:.]"))
        .then(pl.lit("ip_address"))
        .when(candidate.str.contains(r"^[\d -]+$"))
        .then(pl.lit("payment_card"))
    )

NAME_CELL = r"^\p{Lu}[\p{L}'’-]+(?:\s\p{Lu}[\p{L}'’.-]*){0,3}$"
# Runs of two or more capitalised words; a run names a person when a word other than
# the last is a known first name ("Contact John Smith", "Dear Mary Ann Jones").
NAME_IN_TEXT = r"\p{Lu}\p{Ll}+(?:\s\p{Lu}\p{Ll}+)+"
# Header words that mean "this column is a person's name"; "name" alone is weaker
# (products and cities have names too), so it still needs values from the name list.
_STRONG_NAME_HEADER = re.compile(
    r"^(?:(?:first|last|given|family|middle|full|maiden|customer|contact|person|patient|"
    r"employee|cardholder|card_holder|account_holder|holder|sender|recipient|user_full)_?"
    r"(?:name|names)|surname|surnames|forename|forenames|lastname|firstname|fullname)$"
)
_WEAK_NAME_HEADER = re.compile(r"^(?:name|names|author|owner|contact|customer)$")
_HEADER_HINTS = {
    "email": re.compile(r"e_?mail|mail_?addr"),
    "phone": re.compile(r"phone|mobile|tel(?:ephone)?$|^tel|cell|fax|msisdn"),
    "payment_card": re.compile(r"card|^cc_|^pan$|credit"),
    "iban": re.compile(r"iban|bank_?account"),
    "national_id": re.compile(r"ssn|social_?security|national_?id|tax_?id|^nin$"),
    "ip_address": re.compile(r"(?:^|_)ip(?:_|$|v4|v6)|ip_?addr|remote_?addr"),
}
_SSN_BLACKLIST = ["078-05-1120", "457-55-5462", "219-09-9999"]


def normalise_header(name: str) -> str:
    """Lower-case a column name and turn separators into single underscores."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def header_hint(name: str) -> set[str]:
    """PII kinds a column name suggests (``person_name`` only for strong hints)."""
    header = normalise_header(name)
    hints = {kind for kind, rule in _HEADER_HINTS.items() if rule.search(header)}
    if _STRONG_NAME_HEADER.match(header):
        hints.add("person_name")
    return hints


def weak_name_header(name: str) -> bool:
    """Whether the header is a generic ``name``-like word."""
    return bool(_WEAK_NAME_HEADER.match(normalise_header(name)))


@lru_cache(maxsize=1)
def bundled_first_names() -> frozenset[str]:
    """The bundled list of common first names (lower case)."""
    text = resources.files("node.profiling").joinpath("first_names.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def name_list(extra: Iterable[str] | None) -> list[str]:
    """Bundled first names plus the caller's, lower-cased and sorted."""
    names = set(bundled_first_names())
    names.update(name.strip().lower() for name in extra or () if name.strip())
    return sorted(names)


def luhn_valid(digits: pl.Series) -> pl.Series:
    """Vectorised Luhn check of digit-only strings (same result as stdnum.luhn)."""
    # One query for all 19 positions: candidate lists are often short, and 19 rounds of
    # eager Series calls cost more in per-call overhead than in arithmetic.
    # A flat sum: a chain of 19 nested additions made the query planner the hot spot.
    reverse = pl.col("d").str.reverse()
    parts = []
    for position in range(19):
        digit = reverse.str.slice(position, 1).cast(pl.Int32, strict=False).fill_null(0)
        if position % 2:
            digit = digit * 2
            digit = digit - (digit > 9).cast(pl.Int32) * 9
        parts.append(digit)
    total = pl.sum_horizontal(parts)
    return digits.rename("d").to_frame().select(((total % 10) == 0).alias(digits.name)).to_series()


def card_valid(candidates: pl.Series) -> pl.Series:
    """Card numbers: 13–19 digits, a major-network leading digit (2–6), Luhn-valid."""
    digits = candidates.str.replace_all(r"\D", "")
    length = digits.str.len_chars()
    shape = (length >= 13) & (length <= 19) & digits.str.contains(r"^[2-6]")
    return shape & luhn_valid(digits)


def ssn_valid(candidates: pl.Series) -> pl.Series:
    """US SSN components as stdnum.us.ssn checks them (area, group, serial, blacklist)."""
    area = candidates.str.slice(0, 3)
    return (
        ~area.is_in(["000", "666"])
        & ~area.str.starts_with("9")
        & (candidates.str.slice(4, 2) != "00")
        & (candidates.str.slice(7, 4) != "0000")
        & ~candidates.is_in(_SSN_BLACKLIST)
    )


def email_valid(candidates: pl.Series) -> pl.Series:
    """Reject local parts or domains with empty labels (``a..b@x.org``, ``.a@x.org``)."""
    # Literal searches (memchr-fast) rather than one alternation the regex engine scans
    # byte by byte; the same test as ``\.\.|^\.|\.@|@[.-]|-\.``.
    bad = candidates.str.starts_with(".")
    for part in ("..", ".@", "@.", "@-", "-."):
        bad = bad | candidates.str.contains(part, literal=True)
    return ~bad


def _iban_ok(value: str) -> bool:
    return stdnum_iban.is_valid(value)


def _phone_ok(value: str) -> bool:
    digits = sum(char.isdigit() for char in value)
    if not 7 <= digits <= 15:
        return False
    try:
        number = phonenumbers.parse(value, DEFAULT_PHONE_REGION)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def _ip_ok(value: str) -> bool:
    if "." in value:
        return True  # IPv4 candidates were fully checked by the pattern.
    if "::" not in value and value.count(":") != 7:
        return False  # Times such as 12:30:45 are not IPv6 addresses.
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


PYTHON_VALIDATORS: dict[str, Callable[[str], bool]] = {
    "iban": _iban_ok,
    "phone": _phone_ok,
    "ip_address": _ip_ok,
}
VECTOR_VALIDATORS: dict[str, Callable[[pl.Series], pl.Series]] = {
    "email": email_valid,
    "payment_card": card_valid,
    "national_id": ssn_valid,
}


def validate_sampled(
    candidates: pl.Series, check: Callable[[str], bool], budget: int, prior: bool
) -> tuple[pl.Series, int]:
    """Validate up to ``budget`` distinct candidates in Python; others take the majority.

    Args:
        candidates: Candidate strings (may repeat).
        check: The precise validator.
        budget: How many distinct values may still be checked for this column.
        prior: Verdict for unchecked values when none could be checked this time (the
            column's running majority).

    Returns:
        A boolean Series aligned with ``candidates`` and the number of values checked.
    """
    distinct = candidates.unique(maintain_order=True)
    checked = distinct.head(max(budget, 0))
    results = [check(value) for value in checked.to_list()]
    if checked.len() == distinct.len():
        default = False
    elif results:
        default = sum(results) * 2 >= len(results)
    else:
        default = prior
    table = pl.DataFrame({"c": checked, "ok": pl.Series(results, dtype=pl.Boolean)})
    joined = candidates.rename("c").to_frame().join(table, on="c", how="left", maintain_order="left")
    return joined["ok"].fill_null(default), len(results)
