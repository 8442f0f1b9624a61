"""The platform's keyring: which key id is current for each purpose, and until when the
previous one is honoured.

Key *material* is never stored: it is derived from the platform secret and the key id
(``domain.model.secrets``), so every host derives the same keys and events stay secret-free.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.errors import InvalidInput, KeyExpired, TokenInvalid
from domain.model.ids import NS_PLATFORM, natural_id

PURPOSES = ("session", "signing", "kx")
ROTATION_GRACE_S = 24 * 3600
KEYRING_ID = natural_id(NS_PLATFORM, "keyring")


class Keyring(MarketAggregate):
    """Current and previous key ids per purpose (HS256 sessions, Ed25519 signing, X25519)."""

    @event("Created")
    def __init__(self, id: UUID, meta: dict) -> None:
        self.purposes: dict[str, dict[str, Any]] = {
            p: {"current": f"{p}-1", "previous": None, "previous_valid_until_s": 0} for p in PURPOSES
        }

    def rotate(self, meta: dict, purpose: str, at_s: int, grace_s: int = ROTATION_GRACE_S) -> str:
        if purpose not in PURPOSES:
            raise InvalidInput(f"purpose must be one of {PURPOSES}", param="purpose")
        number = int(self.purposes[purpose]["current"].rsplit("-", 1)[1]) + 1
        new_kid = f"{purpose}-{number}"
        self._rotated(meta=meta, purpose=purpose, new_kid=new_kid, previous_valid_until_s=at_s + grace_s)
        return new_kid

    @event("Rotated")
    def _rotated(self, meta: dict, purpose: str, new_kid: str, previous_valid_until_s: int) -> None:
        entry = self.purposes[purpose]
        entry["previous"] = entry["current"]
        entry["current"] = new_kid
        entry["previous_valid_until_s"] = previous_valid_until_s

    def current(self, purpose: str) -> str:
        return self.purposes[purpose]["current"]

    def accepted(self, purpose: str, now_s: int) -> list[str]:
        entry = self.purposes[purpose]
        kids = [entry["current"]]
        if entry["previous"] and now_s < entry["previous_valid_until_s"]:
            kids.append(entry["previous"])
        return kids

    def check_accepted(self, purpose: str, kid: str, now_s: int) -> None:
        entry = self.purposes[purpose]
        if kid in self.accepted(purpose, now_s):
            return
        if kid == entry["previous"]:
            raise KeyExpired("token signed by a platform key retired more than 24 hours ago")
        raise TokenInvalid("token signed by an unknown platform key")
