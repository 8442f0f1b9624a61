"""Natural-key indexes: how the event store enforces uniqueness.

An ``Index`` aggregate's id is uuid5(kind namespace, key). Creating a second index for the
same key is a version conflict in the store, so two hosts registering the same e-mail at
the same moment cannot both win. The index points at the aggregate that owns the key.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import event

from domain.model.base import MarketAggregate


class Index(MarketAggregate):
    """Maps one natural key (an e-mail, a key id) to the id of the aggregate that owns it."""

    @event("Created")
    def __init__(self, id: UUID, meta: dict, kind: str, target_id: str) -> None:
        self.kind = kind
        self.target_id = target_id
        self.retired = False

    def retire(self, meta: dict) -> None:
        if not self.retired:
            self._retired(meta=meta)

    @event("Retired")
    def _retired(self, meta: dict) -> None:
        self.retired = True
