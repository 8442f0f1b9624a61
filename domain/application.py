"""The marketplace application: one eventsourcing Application over every aggregate.

One application means one ordered log (notification id = global position) for auditors and
projections. Commands live in mixins by area (``domain.commands.*``) and take and return
ids and primitives. Persistence is chosen by the environment passed in (SQLite embedded,
PostgreSQL in production); nothing connects at import time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError

from domain.account import Account
from domain.base import MarketAggregate, Meta
from domain.channel import Channel
from domain.commands.catalogue import CatalogueCommands
from domain.commands.devices import DeviceCommands
from domain.commands.identity import IdentityCommands
from domain.commands.money import MoneyCommands
from domain.device import Device
from domain.errors import Conflict, NotFound, TokenInvalid
from domain.keyring import KEYRING_ID, Keyring
from domain.listing import Listing
from domain.ports import NonceStore
from domain.secrets import PlatformSecrets

T = TypeVar("T")
A = TypeVar("A", bound=MarketAggregate)

CONFLICT_ATTEMPTS = 5
KEYRING_CACHE_S = 5.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Marketplace(IdentityCommands, DeviceCommands, CatalogueCommands, MoneyCommands, Application[UUID]):
    """Every command of the marketplace; the single writer of the event log."""

    name = "aimarket"
    # Long-lived aggregates snapshot so loading stays fast as their streams grow. A busy
    # channel takes thousands of debits, so it snapshots less often (each snapshot holds its
    # idempotency keys). See ``_take_snapshots``: snapshots come from the saved object.
    snapshotting_intervals = {Account: 50, Device: 50, Keyring: 50, Listing: 50, Channel: 1000}  # noqa: RUF012

    def __init__(
        self, env: dict[str, str], *, secrets: PlatformSecrets, hub_url: str,
        nonces: NonceStore, clock: Callable[[], datetime] = utcnow, bcrypt_rounds: int = 12,
        session_ttl_s: int = 3600,
    ) -> None:
        super().__init__(env)
        self.secrets = secrets
        self.nonces = nonces
        self.hub_url = hub_url
        self.clock = clock
        self.bcrypt_rounds = bcrypt_rounds
        self.session_ttl_s = session_ttl_s
        self._keyring_cache: tuple[float, Keyring] | None = None
        # Platform tokens whose signature this process already checked: token -> (kid, claims).
        self._verified_tokens: dict[str, tuple[str, dict[str, Any]]] = {}

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """The library's ``save`` (record, snapshot, notify), collecting the events of our own
        aggregates with a plain class check: its ``isinstance`` against runtime-checkable
        protocols costs ~7 us per object on Python 3.11, a sixth of a debit batch's CPU."""
        processing_event: ProcessingEvent = ProcessingEvent()
        for obj in objs:
            if isinstance(obj, MarketAggregate):
                processing_event.events.extend(obj.collect_events())
                processing_event.aggregates[obj.id] = obj
            else:
                processing_event.collect_events(obj)
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    def _take_snapshots(self, processing_event: ProcessingEvent) -> None:
        """Snapshot every aggregate whose save crossed its interval, from the object saved.

        The library re-reads the aggregate from the store to snapshot it, which put a full
        reload on the debit hot path. Commands save the object they just changed and nothing
        else touches it in between, so its state is exactly the recorded state.
        """
        if self.snapshots is None:
            return
        first: dict[UUID, int] = {}
        for event in processing_event.events:
            first.setdefault(event.originator_id, event.originator_version)
        snapshots = []
        for aggregate_id, aggregate in processing_event.aggregates.items():
            interval = self.snapshotting_intervals.get(type(aggregate))
            start = first.get(aggregate_id)
            if interval and start is not None and aggregate.version // interval > (start - 1) // interval:
                snapshot_class = getattr(type(aggregate), "Snapshot", type(self).snapshot_class)
                snapshots.append(snapshot_class.take(aggregate))
        if snapshots:
            self.snapshots.put(snapshots)

    def now_s(self) -> int:
        return int(self.clock().timestamp())

    # -- helpers shared by the command mixins ---------------------------------------------
    def load(self, cls: type[A], aggregate_id: UUID, what: str = "") -> A:
        """Load an aggregate or raise our NotFound (never the library's error)."""
        try:
            aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            raise NotFound(f"{what or cls.__name__.lower()} not found") from None
        if not isinstance(aggregate, cls):
            raise NotFound(f"{what or cls.__name__.lower()} not found")
        return aggregate

    def exists(self, aggregate_id: UUID) -> bool:
        return bool(self.recorder.select_events(aggregate_id, desc=True, limit=1))

    def retrying(self, command: Callable[[], T], attempts: int = CONFLICT_ATTEMPTS) -> T:
        """Run ``command`` (load, decide, save) again on fresh state after a lost race.

        After ``attempts`` lost races the caller gets Conflict (HTTP 409).
        """
        for attempt in range(attempts):
            try:
                return command()
            except IntegrityError:
                # Jittered back-off so racing hosts do not collide again in lockstep.
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise Conflict("the resource changed concurrently; retry the request")

    def keyring(self, *, fresh: bool = False) -> Keyring:
        """The platform keyring, read-only. Cached for a few seconds per process: it is read
        on every authenticated request and changes only on a rotation, whose 24-hour grace
        makes a few seconds of staleness harmless (an unknown key id forces a fresh read)."""
        cached = self._keyring_cache
        if not fresh and cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        try:
            keyring = self.load(Keyring, KEYRING_ID)
        except NotFound:
            keyring = self.retrying(self._create_keyring)
        self._keyring_cache = (time.monotonic() + KEYRING_CACHE_S, keyring)
        return keyring

    def check_platform_kid(self, purpose: str, kid: str, now_s: int) -> None:
        """Raise unless ``kid`` may sign now; re-read once in case another host just rotated."""
        try:
            self.keyring().check_accepted(purpose, kid, now_s)
        except TokenInvalid:
            self.keyring(fresh=True).check_accepted(purpose, kid, now_s)

    def _create_keyring(self) -> Keyring:
        if self.exists(KEYRING_ID):
            return self.load(Keyring, KEYRING_ID)
        keyring = Keyring(id=KEYRING_ID, meta=Meta.system("bootstrap").as_dict())
        self.save(keyring)
        return keyring

    def rotate_platform_key(self, meta: dict[str, Any], purpose: str) -> str:
        def command() -> str:
            keyring = self.keyring(fresh=True)
            self._keyring_cache = None  # the cached object is about to change
            kid = keyring.rotate(meta, purpose, at_s=self.now_s())
            self.save(keyring)
            return kid

        try:
            return self.retrying(command)
        finally:
            self._keyring_cache = None
