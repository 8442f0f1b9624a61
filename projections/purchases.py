"""Purchases as a read model: one row per purchase for the buyer's and the seller's lists,
auditors' reviews and the token expiry sweep.

The row keeps what a list shows (never the token itself) and the token's lifecycle times;
``status`` is computed by the model's own rule (``domain.model.purchase.purchase_status``)
from the facts recorded so far, so the list and the purchase always agree. Times are the
events' own (epoch seconds or milliseconds carried in them, and the event timestamps), never
the wall clock.
"""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any

from domain.model.ports import Tx, ViewDB
from domain.model.purchase import Purchase, purchase_status
from projections.base import Projection

COLUMNS = ("purchase_id", "position", "buyer_account_id", "seller_account_id", "seller_device_id", "listing_id",
           "listing_version", "channel_id", "price_minor", "fee_minor", "currency", "jti", "issued_at_s",
           "start_by_s", "expires_at_s", "purchased_at", "redeemed_at_ms", "receipts", "confirmations",
           "last_outcome", "delivered_at_ms", "expired_reason", "expired_at_s", "revoked_at_s", "status")
INSERT = (f"INSERT INTO purchases ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: S608
          " ON CONFLICT (purchase_id) DO NOTHING")
PRIVATE = ("position", "jti")  # in the row for ordering and the sweep; not in a listed item


class Purchases(Projection):
    name = "purchases"
    event_types = (Purchase.Purchased, Purchase.TokenRedeemed, Purchase.ReceiptRecorded,
                   Purchase.ConfirmationRecorded, Purchase.Delivered, Purchase.TokenExpired, Purchase.TokenRevoked)
    tables = ("purchases",)

    def ddl(self, dialect: str) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS purchases ("
            " purchase_id TEXT PRIMARY KEY, position BIGINT NOT NULL, buyer_account_id TEXT NOT NULL,"
            " seller_account_id TEXT NOT NULL, seller_device_id TEXT NOT NULL, listing_id TEXT NOT NULL,"
            " listing_version INTEGER NOT NULL, channel_id TEXT NOT NULL, price_minor BIGINT NOT NULL,"
            " fee_minor BIGINT NOT NULL, currency TEXT NOT NULL, jti TEXT NOT NULL, issued_at_s BIGINT NOT NULL,"
            " start_by_s BIGINT NOT NULL, expires_at_s BIGINT NOT NULL, purchased_at TEXT NOT NULL,"
            " redeemed_at_ms BIGINT, receipts INTEGER NOT NULL, confirmations INTEGER NOT NULL, last_outcome TEXT,"
            " delivered_at_ms BIGINT, expired_reason TEXT, expired_at_s BIGINT, revoked_at_s BIGINT,"
            " status TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS purchases_buyer ON purchases (buyer_account_id, position)",
            "CREATE INDEX IF NOT EXISTS purchases_seller ON purchases (seller_account_id, position)",
            "CREATE INDEX IF NOT EXISTS purchases_position ON purchases (position)",
            "CREATE INDEX IF NOT EXISTS purchases_start_due ON purchases (status, start_by_s)",
            "CREATE INDEX IF NOT EXISTS purchases_transfer_due ON purchases (status, expires_at_s)",
        ]

    def __init__(self) -> None:
        # ``buffered`` only: the open batch's rows by purchase id (None: not stored), those its
        # Purchased events add, its events (replayed one by one should a stored row be met).
        self._tx: Tx | None = None
        self._rows: dict[str, dict[str, Any] | None] = {}
        self._added: list[str] = []
        self._events: list[tuple[Any, int]] = []

    def _held(self, tx: Tx) -> bool:
        """Whether this batch's rows are held in memory (reset for a new transaction)."""
        if not self.buffered:
            return False
        if self._tx is not tx:
            self._tx, self._rows, self._added, self._events = tx, {}, [], []
        return True

    def _row(self, tx: Tx, purchase_id: str) -> dict[str, Any] | None:
        if not self._held(tx):
            return tx.fetchone("SELECT * FROM purchases WHERE purchase_id = ?", (purchase_id,))
        if purchase_id not in self._rows:
            self._rows[purchase_id] = tx.fetchone("SELECT * FROM purchases WHERE purchase_id = ?", (purchase_id,))
        return self._rows[purchase_id]

    def _update(self, tx: Tx, purchase_id: str, **changes: Any) -> None:
        row = self._row(tx, purchase_id)
        if row is None:  # impossible in log order; a later event never precedes its Purchased
            return
        row.update(changes)
        row["status"] = purchase_status(delivered=row["delivered_at_ms"] is not None,
                                        revoked=row["revoked_at_s"] is not None,
                                        expired_reason=row["expired_reason"] or "",
                                        redeemed=row["redeemed_at_ms"] is not None)
        if self._held(tx):
            return  # written in flush
        names = [*changes, "status"]
        tx.execute(f"UPDATE purchases SET {', '.join(f'{n} = ?' for n in names)} WHERE purchase_id = ?",  # noqa: S608
                   (*(row[n] for n in names), purchase_id))

    def process(self, event: Any, tx: Tx, position: int) -> None:
        if self._held(tx):
            self._events.append((event, position))
        self._handle(event, tx, position)

    def flush(self, tx: Tx) -> None:
        """The batch's rows (``buffered``), each written once as its events left it: the added
        ones in one run, the stored ones it changed by one UPDATE each. Should an added one be
        stored already (a Purchased met twice, which the log's versions rule out) the batch's
        events are applied one by one instead, as unbuffered, so ON CONFLICT decides as ever."""
        if not self.buffered or self._tx is not tx:
            return
        rows, added, events = self._rows, self._added, self._events
        self._tx, self._rows, self._added, self._events = None, {}, [], []
        if _any_stored(tx, added):
            self.buffered = False
            try:
                for event, position in events:
                    self._handle(event, tx, position)
            finally:
                self.buffered = True
            return
        fresh = set(added)
        if added:
            tx.executemany(INSERT, [tuple(rows[i][c] for c in COLUMNS) for i in added])  # type: ignore[index]
        for purchase_id, row in rows.items():
            if row is not None and purchase_id not in fresh:
                tx.execute(f"UPDATE purchases SET {', '.join(f'{n} = ?' for n in COLUMNS[1:])}"  # noqa: S608
                           " WHERE purchase_id = ?", (*(row[n] for n in COLUMNS[1:]), purchase_id))

    @singledispatchmethod
    def _handle(self, event: Any, tx: Tx, position: int) -> None:
        """Ignore other events."""

    @_handle.register
    def _purchased(self, event: Purchase.Purchased, tx: Tx, position: int) -> None:
        row = (str(event.originator_id), position, event.buyer_account_id, event.seller_account_id,
               event.seller_device_id, event.listing_id, event.listing_version, event.channel_id, event.price_minor,
               event.fee_minor, event.currency, event.jti, event.issued_at_s, event.start_by_s, event.expires_at_s,
               event.timestamp.isoformat(), None, 0, 0, None, None, None, None, None, "issued")
        if not self._held(tx):
            tx.execute(INSERT, row)
        elif row[0] not in self._rows:  # else held already: the INSERT would do nothing
            self._rows[row[0]] = dict(zip(COLUMNS, row, strict=True))
            self._added.append(row[0])

    @_handle.register
    def _redeemed(self, event: Purchase.TokenRedeemed, tx: Tx, position: int) -> None:
        self._update(tx, str(event.originator_id), redeemed_at_ms=event.redeemed_at_ms)

    @_handle.register
    def _receipt(self, event: Purchase.ReceiptRecorded, tx: Tx, position: int) -> None:
        row = self._row(tx, str(event.originator_id))
        if row is not None:
            self._update(tx, str(event.originator_id), receipts=row["receipts"] + 1, last_outcome=event.outcome)

    @_handle.register
    def _confirmation(self, event: Purchase.ConfirmationRecorded, tx: Tx, position: int) -> None:
        row = self._row(tx, str(event.originator_id))
        if row is not None:
            self._update(tx, str(event.originator_id), confirmations=row["confirmations"] + 1)

    @_handle.register
    def _delivered(self, event: Purchase.Delivered, tx: Tx, position: int) -> None:
        self._update(tx, str(event.originator_id), delivered_at_ms=event.delivered_at_ms)

    @_handle.register
    def _expired(self, event: Purchase.TokenExpired, tx: Tx, position: int) -> None:
        self._update(tx, str(event.originator_id), expired_reason=event.reason, expired_at_s=event.at_s)

    @_handle.register
    def _revoked(self, event: Purchase.TokenRevoked, tx: Tx, position: int) -> None:
        self._update(tx, str(event.originator_id), revoked_at_s=event.at_s)


def _any_stored(tx: Tx, purchase_ids: list[str], chunk: int = 500) -> bool:
    """Whether any of ``purchase_ids`` has a stored row (one query per ``chunk`` ids)."""
    for at in range(0, len(purchase_ids), chunk):
        ids = purchase_ids[at:at + chunk]
        if tx.fetchone(f"SELECT 1 AS found FROM purchases WHERE purchase_id IN ({', '.join('?' * len(ids))})"  # noqa: S608
                       " LIMIT 1", ids):
            return True
    return False


# -- reading ------------------------------------------------------------------------------------
def purchases_page(db: ViewDB, *, account_id: str | None, role: str | None, status: str | None, limit: int,
                   before: int | None) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first: the purchases of ``account_id`` (as ``role``, buyer or seller, or either
    when None), or every purchase when ``account_id`` is None (auditors). ``before`` is the
    cursor (a position) of the previous page; the next page's cursor comes back with it."""
    where, params = ["1 = 1"], []
    if account_id is not None:
        if role == "buyer":
            where.append("buyer_account_id = ?")
            params.append(account_id)
        elif role == "seller":
            where.append("seller_account_id = ?")
            params.append(account_id)
        else:
            where.append("(buyer_account_id = ? OR seller_account_id = ?)")
            params += [account_id, account_id]
    if status is not None:
        where.append("status = ?")
        params.append(status)
    if before is not None:
        where.append("position < ?")
        params.append(before)
    rows = db.fetchall(f"SELECT * FROM purchases WHERE {' AND '.join(where)} ORDER BY position DESC LIMIT ?",  # noqa: S608
                       (*params, limit))
    cursor = str(rows[-1]["position"]) if len(rows) == limit else None
    return [_item(r) for r in rows], cursor


def _item(row: dict[str, Any]) -> dict[str, Any]:
    item = {k: v for k, v in row.items() if k not in PRIVATE}
    item["id"] = item.pop("purchase_id")
    return item


def due_for_expiry(db: ViewDB, *, now_s: int, skew_s: int, limit: int) -> list[str]:
    """Purchases whose token may have a deadline past (``Purchase.expire`` decides): issued
    and past ``start_by``, or not yet delivered and past ``exp``."""
    rows = db.fetchall(
        "SELECT purchase_id FROM purchases WHERE (status = 'issued' AND start_by_s < ?)"
        " OR (status = 'redeemed' AND expires_at_s < ?) ORDER BY position LIMIT ?",
        (now_s - skew_s, now_s - skew_s, limit))
    return [r["purchase_id"] for r in rows]
