"""The marketplace application: one eventsourcing Application over every aggregate.

One application means one ordered log (notification id = global position) for auditors and
projections. Commands live in mixins by area (``domain.app.*``) and take and return
ids and primitives. Persistence is chosen by the environment passed in (SQLite embedded,
PostgreSQL in production); nothing connects at import time.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from domain.app.catalogue import CatalogueService
from domain.app.devices import DeviceService
from domain.app.eventsourcing_ext import FastSaveApplication
from domain.app.identity import IdentityService
from domain.app.invocations import InvocationConfig, InvocationService
from domain.app.money import MoneyConfig, MoneyService
from domain.app.payouts import PayoutService
from domain.app.purchases import PurchaseConfig, PurchaseService
from domain.app.refunds import RefundService
from domain.app.settlement import SettlementService
from domain.app.traces import TraceService
from domain.app.transactions import TransactionService
from domain.model.account import Account
from domain.model.base import MarketAggregate, Meta
from domain.model.channel import Channel
from domain.model.device import Device
from domain.model.errors import Conflict, NotFound, TokenInvalid
from domain.model.keyring import KEYRING_ID, Keyring
from domain.model.listing import Listing
from domain.model.ports import CardGateway, ChainChannels, NonceStore
from domain.model.secrets import PlatformSecrets

T = TypeVar("T")
A = TypeVar("A", bound=MarketAggregate)

CONFLICT_ATTEMPTS = 5
KEYRING_CACHE_S = 5.0
# Inside ``retrying``: aggregate id -> the pristine state last loaded of a hot aggregate.
_RETRY_BASES: ContextVar[dict[UUID, Any] | None] = ContextVar("aimarket_retry_bases", default=None)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Marketplace(FastSaveApplication):
    """The single writer of the event log, composed of one service per area.

    ``market.identity``, ``.devices``, ``.catalogue``, ``.money``, ``.payouts``,
    ``.settlement``, ``.refunds``, ``.purchases``, ``.invocations`` and ``.traces`` hold the commands; this class holds
    what they share: loading, saving, the retry rule for lost races, the clock and the platform keyring.
    """

    name = "aimarket"
    # Long-lived aggregates snapshot so loading stays fast as their streams grow. A busy
    # channel takes thousands of debits, so it snapshots less often (each snapshot holds its
    # idempotency keys). See ``_take_snapshots``: snapshots come from the saved object.
    snapshotting_intervals = {Account: 50, Device: 50, Keyring: 50, Listing: 50, Channel: 1000}  # noqa: RUF012

    def __init__(
        self, env: dict[str, str], *, secrets: PlatformSecrets, hub_url: str,
        nonces: NonceStore, clock: Callable[[], datetime] = utcnow, bcrypt_rounds: int = 12,
        session_ttl_s: int = 3600, money_config: MoneyConfig | None = None,
        chain: Callable[[], ChainChannels] | None = None, cards: CardGateway | None = None,
        purchase_config: PurchaseConfig | None = None, invocation_config: InvocationConfig | None = None,
    ) -> None:
        super().__init__(env)
        self.secrets = secrets
        self.nonces = nonces
        self.hub_url = hub_url
        self.clock = clock
        self._keyring_cache: tuple[float, Keyring] | None = None
        self.identity = IdentityService(self, bcrypt_rounds=bcrypt_rounds, session_ttl_s=session_ttl_s)
        self.devices = DeviceService(self)
        self.catalogue = CatalogueService(self)
        self.money = MoneyService(self, money_config or MoneyConfig(), chain=chain, cards=cards)
        self.payouts = PayoutService(self)
        self.settlement = SettlementService(self)
        self.refunds = RefundService(self)
        self.traces = TraceService(self)
        self.purchases = PurchaseService(self, purchase_config)
        self.invocations = InvocationService(self, invocation_config)
        self.transactions = TransactionService(self)  # read only: a transaction's trace

    def now_s(self) -> int:
        return int(self.clock().timestamp())

    # -- helpers shared by the command mixins ---------------------------------------------
    # Aggregates that ``retrying`` fast-forwards instead of reloading (see ``load``).
    fast_forwarded: tuple[type[MarketAggregate], ...] = (Channel,)

    def load(self, cls: type[A], aggregate_id: UUID, what: str = "") -> A:
        """Load an aggregate or raise our NotFound (never the library's error).

        Inside ``retrying``, a ``fast_forwarded`` aggregate (a channel: tens of ms to load
        once it holds thousands of idempotency records) is read in full once; each retry
        after a lost race reads only the events saved since and applies them to the
        pristine copy kept for the call, then decides on a fresh copy of it. A command
        racing a stream of debit commits then spends a few ms per attempt, not a full
        reload, and gets to save between two commits.
        """
        bases = _RETRY_BASES.get()
        if bases is None or cls not in self.fast_forwarded:
            return self._load(cls, aggregate_id, what)
        base = bases.get(aggregate_id)
        if base is None:
            base = bases[aggregate_id] = self._load(cls, aggregate_id, what)
        else:
            for stored in self.repository.event_store.get(aggregate_id, gt=base.version):
                stored.mutate(base)
        return decision_copy(base)

    def _load(self, cls: type[A], aggregate_id: UUID, what: str) -> A:
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

        After ``attempts`` lost races the caller gets Conflict (HTTP 409). Channels loaded
        by the command are fast-forwarded between attempts, not reloaded (``load``).
        """
        token = _RETRY_BASES.set({}) if _RETRY_BASES.get() is None else None  # the outermost call owns it
        try:
            for attempt in range(attempts):
                try:
                    return command()
                except IntegrityError:
                    # Jittered exponential back-off (1 ms doubling, at most 50 ms) so racing
                    # writers spread out instead of colliding again in lockstep.
                    time.sleep(random.uniform(0, min(0.001 * 2**attempt, 0.05)))
            raise Conflict("the resource changed concurrently; retry the request")
        finally:
            if token is not None:
                _RETRY_BASES.reset(token)

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


def decision_copy(aggregate: A) -> A:
    """A copy of ``aggregate`` to decide on, its containers copied two levels deep.

    Deep enough for every change an event makes (a value set, a record added or replaced,
    a counter in a per-seller record bumped) while sharing what no event changes in place
    (a channel's idempotency records, written once): ~1 ms for a channel whose ``deepcopy``
    takes tens of ms.
    """
    clone = copy.copy(aggregate)
    for name, value in vars(aggregate).items():
        if isinstance(value, dict):
            clone.__dict__[name] = {k: _copy_container(v) for k, v in value.items()}
        elif isinstance(value, (list, set)):
            clone.__dict__[name] = type(value)(_copy_container(v) for v in value)
    return clone


def _copy_container(value: Any) -> Any:
    return value.copy() if isinstance(value, (dict, list, set)) else value
