"""XMLSchema ``dateTime`` values as Data Integrity proofs carry them (``created``, ``validFrom``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from domain.model.errors import InvalidInput

UTC_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
"""What we sign: a dateTime in UTC with ``Z``."""
_XSD_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def xsd_datetime(moment: datetime) -> str:
    """Format an aware datetime as an XMLSchema dateTime in UTC: ``2024-05-01T12:00:00Z``.

    Microseconds are kept only when non-zero.
    """
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise InvalidInput("an aware datetime is required")
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_xsd_datetime(text: str) -> datetime:
    """Parse an XMLSchema dateTime that carries a time zone into an aware UTC datetime.

    Raises:
        InvalidInput: not a dateTime, or no time zone.
    """
    match = _XSD_DATETIME.match(text) if isinstance(text, str) else None
    if not match:
        raise InvalidInput("expected an XMLSchema dateTime with a time zone, e.g. 2024-05-01T12:00:00Z")
    base, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]  # keep at most microseconds
    try:
        parsed = datetime.fromisoformat(base + fraction + ("+00:00" if zone == "Z" else zone))
    except ValueError as exc:
        raise InvalidInput(f"invalid dateTime {text!r}") from exc
    return parsed.astimezone(UTC)
