"""Money: integer minor units with an explicit currency or token code.

Never float, never Decimal in events. A currency code is upper-case ISO 4217 (``USD``) or
a token symbol (``USDT``); its scale (digits after the point) is known here so amounts can
be shown to people, but arithmetic only ever touches the integer ``amount_minor``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from domain.model.errors import InvalidInput

# Scale = number of minor-unit digits. Tokens are ERC-20 style (6 decimals for stablecoins).
SCALES: dict[str, int] = {"USD": 2, "EUR": 2, "GBP": 2, "USDC": 6, "USDT": 6, "TUSD": 6}
_CODE = re.compile(r"^[A-Z][A-Z0-9]{2,9}$")
BPS_DENOMINATOR = 10_000


def check_currency(code: str) -> str:
    """Return ``code`` if it is a known currency/token code, else raise InvalidInput."""
    if not isinstance(code, str) or not _CODE.match(code) or code not in SCALES:
        raise InvalidInput(f"unknown currency {code!r}; known: {sorted(SCALES)}", param="currency")
    return code


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in minor units of one currency. Immutable; arithmetic keeps the currency."""

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.amount_minor) is not int:  # bool is an int subclass: refuse it too
            raise InvalidInput("amount_minor must be an integer", param="amount_minor")
        check_currency(self.currency)

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise InvalidInput(f"currency mismatch: {self.currency} vs {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def fee(self, fee_bps: int) -> Money:
        """The fee at ``fee_bps`` basis points, rounded down (the payer never pays more)."""
        if not 0 <= fee_bps <= BPS_DENOMINATOR:
            raise InvalidInput("fee_bps must be within 0..10000", param="fee_bps")
        return Money(self.amount_minor * fee_bps // BPS_DENOMINATOR, self.currency)

    def to_dict(self) -> dict[str, int | str]:
        return {"amount_minor": self.amount_minor, "currency": self.currency}

    def display(self) -> str:
        """Human form, e.g. ``12.50 USD``; for people only, never parsed back."""
        scale = SCALES[self.currency]
        sign = "-" if self.amount_minor < 0 else ""
        whole, frac = divmod(abs(self.amount_minor), 10**scale)
        return f"{sign}{whole}.{frac:0{scale}d} {self.currency}" if scale else f"{sign}{whole} {self.currency}"
