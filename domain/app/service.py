"""What every application service shares: the store it loads from and saves to.

Services are composed into the ``Marketplace`` (one per area) rather than mixed into it:
each gets the application (the one event log, its retry rule, its clock) and the adapters
of its area through its constructor, and reaches another area only through
``self.market.<area>``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace
    from domain.model.base import MarketAggregate
    from domain.model.keyring import Keyring
    from domain.model.ports import NonceStore
    from domain.model.secrets import PlatformSecrets

T = TypeVar("T")
A = TypeVar("A", bound="MarketAggregate")


class Service:
    """Base of the application services: thin access to the application they belong to."""

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    # -- the store -----------------------------------------------------------------------
    def load(self, cls: type[A], aggregate_id: UUID, what: str = "") -> A:
        return self.market.load(cls, aggregate_id, what)

    def exists(self, aggregate_id: UUID) -> bool:
        return self.market.exists(aggregate_id)

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        return self.market.save(*objs, **kwargs)

    def retrying(self, command: Callable[[], T], attempts: int | None = None) -> T:
        return self.market.retrying(command) if attempts is None else self.market.retrying(command, attempts)

    # -- shared facts ----------------------------------------------------------------------
    def now_s(self) -> int:
        return self.market.now_s()

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.market.clock

    @property
    def secrets(self) -> PlatformSecrets:
        return self.market.secrets

    @property
    def nonces(self) -> NonceStore:
        return self.market.nonces

    @property
    def hub_url(self) -> str:
        return self.market.hub_url

    def keyring(self, *, fresh: bool = False) -> Keyring:
        return self.market.keyring(fresh=fresh)

    def check_platform_kid(self, purpose: str, kid: str, now_s: int) -> None:
        self.market.check_platform_kid(purpose, kid, now_s)
