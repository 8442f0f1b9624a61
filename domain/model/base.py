"""What every aggregate and event shares: who acted, and why.

Every event method takes ``meta`` (a :class:`Meta` as a plain dict) as its first argument,
so each stored event says *who* (``actor``), *which request or job* (``correlation_id``)
and *what caused it* (``causation_id``); the library adds ``timestamp`` (UTC).
Events hold primitives only: str, int, bool, None, and lists/dicts of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

SYSTEM_ACTOR = "system"


@dataclass(frozen=True, slots=True)
class Meta:
    """Who acts and why; built by the API or a worker, passed into every command."""

    actor: str
    correlation_id: str
    causation_id: str = ""

    def as_dict(self) -> dict[str, str]:
        # Spelled out: dataclasses.asdict deep-copies, and this runs on every request.
        return {"actor": self.actor, "correlation_id": self.correlation_id, "causation_id": self.causation_id}

    def caused(self, causation_id: str) -> Meta:
        """The same actor and correlation, caused by another message (a worker step)."""
        return Meta(self.actor, self.correlation_id, causation_id)

    @classmethod
    def system(cls, correlation_id: str, causation_id: str = "") -> Meta:
        return cls(SYSTEM_ACTOR, correlation_id, causation_id)


def actor_for_account(account_id: UUID | str) -> str:
    return f"account:{account_id}"


def actor_for_device(device_id: UUID | str) -> str:
    return f"device:{device_id}"


class MarketAggregate(Aggregate):
    """Base class of our aggregates (pure: no I/O, clock or randomness inside events)."""

    def to_public(self) -> dict[str, Any]:  # pragma: no cover - overridden where exposed
        raise NotImplementedError
