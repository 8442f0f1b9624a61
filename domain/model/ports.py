"""The ports: interfaces the application, projections and workers need from the outside.

Declared beside the pure model so every layer can be typed against them; implemented by
the adapters in ``ops/adapters/`` and handed in by the composition root
(``ops/bootstrap.py``). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from concurrent.futures import Future


# -- read-model database ---------------------------------------------------------------------
class Tx(Protocol):
    """One open transaction on the read-model database: statements use ``?`` placeholders."""

    dialect: str  # "sqlite" or "postgres"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the affected row count."""

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None: ...


class ViewDB(Protocol):
    """A pool of connections to the read-model database (SQLite embedded, PostgreSQL)."""

    dialect: str
    # Errors after which a reader reconnects and tries again (a lost connection).
    transient_errors: tuple[type[BaseException], ...]

    def transaction(self) -> AbstractContextManager[Tx]:
        """A read-write transaction, committed on success and rolled back on error."""

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


class RunnerLock(Protocol):
    """Lets one projection runner of a name be active across processes and hosts."""

    def acquire(self) -> bool:
        """Take the lock if free (never blocks); True when this runner holds it."""

    def wait_for_events(self, timeout_s: float) -> None:
        """Sleep until new events may exist or ``timeout_s`` passed; raise if the lock is lost."""

    def release(self) -> None: ...


# -- single-use values -----------------------------------------------------------------------
class NonceStore(Protocol):
    """Remembers single-use values (JWT ``jti``, message nonces) across all hosts."""

    def use_once(self, key: str, ttl_s: int) -> None:
        """Record ``key`` for ``ttl_s`` seconds; raise TokenReplayed if it was already used."""

    def sweep(self) -> int:
        """Forget values whose time-to-live has passed; return how many."""


# -- card rail -------------------------------------------------------------------------------
class PayoutGateway(Protocol):
    """Pays sellers out by the card rail.

    Raises ``Unavailable`` when a retry with the same ``payout_id`` may succeed, and
    ``PaymentProviderRejected`` (an ``InvalidInput``) when the provider refused for good.
    """

    def create_transfer(self, *, amount_minor: int, currency: str, destination: str,
                        payout_id: str) -> dict[str, Any]:
        """Transfer ``amount_minor`` to ``destination`` idempotently (key: ``payout_id``)."""


class RefundGateway(Protocol):
    """Gives card payments back to the buyer; errors as :class:`PayoutGateway`."""

    def create_refund(self, *, payment_intent_id: str, amount_minor: int, refund_key: str) -> dict[str, Any]:
        """Refund ``amount_minor`` of one PaymentIntent idempotently (key: ``refund_key``)."""


class CardGateway(PayoutGateway, RefundGateway, Protocol):
    """The whole card rail: payments in (PaymentIntents, signed webhooks), payouts, refunds."""

    def create_payment_intent(self, *, amount_minor: int, currency: str, idempotency_key: str,
                              metadata: dict[str, str]) -> dict[str, Any]: ...

    def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]: ...

    def verify_webhook(self, payload: bytes, sig_header: str | None, *, tolerance_s: int = 300) -> dict[str, Any]:
        """The event of a correctly signed webhook; raise SignatureInvalid otherwise."""


# -- chain rail ------------------------------------------------------------------------------
class ChainChannels(Protocol):
    """The payment-channel contract as the money service reads it (deposits, voucher domain)."""

    def domain(self) -> Any:
        """The EIP-712 domain vouchers are signed under (``domain.model.voucher.VoucherDomain``)."""

    def read_deposit(self, tx_hash: str | bytes) -> list[Any]:
        """The ``Opened``/``ToppedUp`` deposits the contract logged in one transaction."""

    def confirmations(self, tx_hash: str | bytes) -> int: ...


class SettleChain(Protocol):
    """The operator's settle transactions, in two steps (sign, then broadcast)."""

    def now_s(self) -> int:
        """The chain's clock: the latest block's timestamp."""

    def window_end_s(self, chain_channel_id: str) -> int: ...

    def status(self, chain_channel_id: str) -> str:
        """The contract's view of the channel: "none", "open" or "settled"."""

    def receipt(self, tx_hash: str) -> Any:
        """``Mined(status, block_number)`` or None while unknown."""

    def nonce_consumed(self, nonce: int) -> bool: ...

    def wait(self, tx_hash: str, timeout_s: float | None = None) -> Any: ...

    def sign(self, **settle_args: Any) -> Any:
        """A ``SignedSettle(tx_hash, nonce, raw_tx, gas)``; raises a MarketError on a dry-run revert."""

    def broadcast(self, raw_tx: str) -> None: ...

    def settled_record(self, chain_channel_id: str, known: Sequence[str] = (),
                       from_block: int = 0) -> dict[str, Any] | None:
        """How the contract settled the channel (``tx_hash``, ``block_number``,
        ``cumulative_minor``, ``fee_minor``, ``refund_minor``, ``payees`` as ``[[address,
        amount], ...]``), from its ``ChannelSettled`` log; None if it never settled.
        ``known`` transactions are looked at first; the logs are searched from ``from_block``."""


class SettlementLease(Protocol):
    """Lets one settlement worker at a time act on a channel, across processes and hosts;
    a holder that dies (killed, its host gone) loses the lease with its session."""

    def hold(self, name: str, wait_s: float) -> AbstractContextManager[None]:
        """Hold the lease ``name`` for the block; raise ``Unavailable`` if another holder
        kept it for ``wait_s`` seconds (retry later)."""


# -- debit sequencing (hot path) -------------------------------------------------------------
class DebitRouter(Protocol):
    """Routes each channel's debits to the one process that sequences it."""

    me: str
    forward_wait_s: float

    @property
    def started(self) -> bool: ...

    def start(self, deliver: Callable[[dict[str, Any]], Future]) -> DebitRouter: ...

    def owner_of(self, channel_id: str) -> str: ...

    def forward(self, owner: str, message: dict[str, Any]) -> Future: ...

    def close(self) -> None: ...


BatchSaver = Callable[..., Awaitable[None]]
"""``await saver(aggregates[, reads])``: records their pending events in one transaction.

``reads`` (purchases, ``domain.app.purchases``) maps the ids of aggregates the batch decided
on without changing them (a listing, a device) to the version it read, or to None for one
that must not exist yet (a new purchase). Inside the same transaction, before anything is
recorded, the saver checks each against the store and raises :class:`StaleRead` naming those
that differ: nothing is recorded, and the batch runs again on fresh state."""


class StaleRead(Exception):
    """Raised by a ``BatchSaver`` when an aggregate the batch read changed (or exists) in the store."""

    def __init__(self, ids: Sequence[Any]) -> None:
        super().__init__(f"{len(ids)} aggregates changed since the batch read them")
        self.ids = list(ids)

SettlementQueue = Callable[[str], None]
"""``enqueue(channel_id)``: asks a worker to settle a closing channel now."""

Clock = Callable[[], Any]
"""Returns the current time as an aware ``datetime`` (injectable; freezegun in tests)."""

