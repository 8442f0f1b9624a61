"""Identifiers. Ids derived from natural keys use uuid5 so retries land on the same id."""

from __future__ import annotations

from uuid import UUID, uuid5

from domain.model.errors import InvalidInput

# One namespace per kind of natural key: the same text under two kinds never collides.
_ROOT = UUID("6d1f5f0e-3b7c-4f4e-9a55-0c3a1f5b9e21")
NS_EMAIL = uuid5(_ROOT, "email")
NS_CREDENTIAL = uuid5(_ROOT, "credential")
NS_DEVICE = uuid5(_ROOT, "device")
NS_DEVICE_KEY = uuid5(_ROOT, "device-key")
NS_PLATFORM = uuid5(_ROOT, "platform")


def natural_id(namespace: UUID, key: str) -> UUID:
    """The aggregate id for a natural key (stable across retries and hosts)."""
    return uuid5(namespace, key)


def parse_uuid(value: str, *, param: str = "id") -> UUID:
    """Parse a client-supplied id; raise InvalidInput (never ValueError) when malformed."""
    try:
        return UUID(str(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput(f"{param} must be a UUID", param=param) from None
