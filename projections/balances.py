"""Balances: the double-entry ledger as a read model (postings, balances, channels, earnings).

Every money event becomes postings by the pure rules in ``domain.model.ledger``; each posting is
stored and added to its account's balance in the runner's transaction (exactly-once), so
``SUM(balance_minor)`` per currency is zero at every tracked position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import singledispatchmethod
from typing import Any

from domain.model import ledger
from domain.model.channel import Channel
from domain.model.ledger import ChannelRef, Posting
from domain.model.payout import SellerPayouts
from domain.model.ports import Tx
from projections.base import Projection

POSTING_SQL = "INSERT INTO ledger_postings VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
#: A batch's held postings when none can conflict (see ``Balances._postings``): no conflict
#: clause, so a long run goes by COPY (``projections.coalesce``).
POSTING_NEW_SQL = "INSERT INTO ledger_postings VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
BALANCE_SQL = ("INSERT INTO ledger_balances VALUES (?, ?, ?) ON CONFLICT (account, currency) DO UPDATE"
               " SET balance_minor = ledger_balances.balance_minor + excluded.balance_minor")
SPENT_SQL = "UPDATE money_channels SET spent_minor = spent_minor + ?, fee_minor = fee_minor + ? WHERE channel_id = ?"
EARNINGS_SQL = ("INSERT INTO seller_earnings VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT"
                " (seller_account_id, currency, channel_id) DO UPDATE SET"
                " gross_minor = seller_earnings.gross_minor + excluded.gross_minor,"
                " fee_minor = seller_earnings.fee_minor + excluded.fee_minor,"
                " net_minor = seller_earnings.net_minor + excluded.net_minor,"
                " debits = seller_earnings.debits + excluded.debits")


@dataclass
class _Held:
    """A rebuild's batch of writes kept in memory (``buffered``): postings as rows, the sums
    as deltas per key. Every one is an append or an addition no handler reads back (``_ref``
    reads only a channel's immutable columns), so writing them once at the end of the batch
    gives the rows the statements one by one would give, in a few statements per batch."""

    tx: Tx
    postings: list[tuple[Any, ...]] = field(default_factory=list)
    balances: dict[tuple[str, str], int] = field(default_factory=dict)
    spent: dict[str, list[int]] = field(default_factory=dict)  # channel -> [amount, fee]
    earnings: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)  # -> [gross, fee, net, debits]


class Balances(Projection):
    name = "balances"
    # 2: card refunds (money_channels.card_refund_pending_minor); 3: late payments, refunds
    # failed after being sent, operator resolutions; 4: holds (money_channels.held_minor, money_holds).
    version = 4
    event_types = (Channel.Opened, Channel.ToppedUp, Channel.LatePaymentReceived, Channel.VoucherRecorded, Channel.Debited,
                   Channel.CloseRequested, Channel.Expired, Channel.Settled, Channel.Refunded,
                   Channel.CardRefundSent, Channel.CardRefundFailed, Channel.CardRefundResolved,
                   Channel.HoldPlaced, Channel.HoldReleased,
                   SellerPayouts.Started, SellerPayouts.PayoutRequested, SellerPayouts.PayoutSent,
                   SellerPayouts.PayoutFailed)
    tables = ("ledger_postings", "ledger_balances", "money_channels", "seller_earnings", "payouts",
              "payout_owners", "money_holds")

    def __init__(self) -> None:
        self._refs: dict[str, ChannelRef] = {}  # immutable per channel: safe to keep
        self._held: _Held | None = None  # buffered only: the open batch's writes

    def ddl(self, dialect: str) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS ledger_postings ("
            " position BIGINT NOT NULL, seq INTEGER NOT NULL, account TEXT NOT NULL, currency TEXT NOT NULL,"
            " amount_minor BIGINT NOT NULL, kind TEXT NOT NULL, channel_id TEXT, at TEXT NOT NULL,"
            " PRIMARY KEY (position, seq))",
            "CREATE INDEX IF NOT EXISTS ledger_postings_account ON ledger_postings (account, position)",
            "CREATE TABLE IF NOT EXISTS ledger_balances ("
            " account TEXT NOT NULL, currency TEXT NOT NULL, balance_minor BIGINT NOT NULL,"
            " PRIMARY KEY (account, currency))",
            "CREATE TABLE IF NOT EXISTS money_channels ("
            " channel_id TEXT PRIMARY KEY, buyer_account_id TEXT NOT NULL, currency TEXT NOT NULL,"
            " rail TEXT NOT NULL, status TEXT NOT NULL, deposit_minor BIGINT NOT NULL, spent_minor BIGINT NOT NULL,"
            " fee_minor BIGINT NOT NULL, voucher_minor BIGINT NOT NULL, settled_minor BIGINT NOT NULL,"
            " refunded_minor BIGINT NOT NULL, expiry_s BIGINT NOT NULL, opened_at TEXT NOT NULL,"
            " settlement_ref TEXT, card_refund_pending_minor BIGINT NOT NULL, held_minor BIGINT NOT NULL DEFAULT 0)",
            "CREATE INDEX IF NOT EXISTS money_channels_buyer ON money_channels (buyer_account_id)",
            "CREATE INDEX IF NOT EXISTS money_channels_due ON money_channels (status, expiry_s)",
            # Partial: the refund sweep reads only the few channels with refunds still to send.
            "CREATE INDEX IF NOT EXISTS money_channels_refunds ON money_channels (channel_id)"
            " WHERE card_refund_pending_minor > 0",
            "CREATE TABLE IF NOT EXISTS seller_earnings ("
            " seller_account_id TEXT NOT NULL, currency TEXT NOT NULL, channel_id TEXT NOT NULL,"
            " gross_minor BIGINT NOT NULL, fee_minor BIGINT NOT NULL, net_minor BIGINT NOT NULL,"
            " debits INTEGER NOT NULL, PRIMARY KEY (seller_account_id, currency, channel_id))",
            "CREATE TABLE IF NOT EXISTS payouts ("
            " payout_id TEXT PRIMARY KEY, seller_account_id TEXT NOT NULL, currency TEXT NOT NULL,"
            " amount_minor BIGINT NOT NULL, status TEXT NOT NULL, transfer_id TEXT, reason TEXT,"
            " requested_at TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS payouts_seller ON payouts (seller_account_id)",
            # Open holds (metered sessions), for the lapse sweep; a hold's row goes when it ends.
            "CREATE TABLE IF NOT EXISTS money_holds ("
            " invocation_id TEXT PRIMARY KEY, channel_id TEXT NOT NULL, amount_minor BIGINT NOT NULL,"
            " lapse_at_s BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS money_holds_due ON money_holds (lapse_at_s)",
            "CREATE TABLE IF NOT EXISTS payout_owners ("
            " aggregate_id TEXT PRIMARY KEY, seller_account_id TEXT NOT NULL, currency TEXT NOT NULL)",
        ]

    # -- helpers ----------------------------------------------------------------------------------
    def _ref(self, tx: Tx, channel_id: str) -> ChannelRef:
        ref = self._refs.get(channel_id)
        if ref is None:
            row = tx.fetchone("SELECT buyer_account_id, currency, rail FROM money_channels WHERE channel_id = ?",
                              (channel_id,))
            assert row is not None, f"money event for unknown channel {channel_id}"
            ref = ChannelRef(channel_id, row["buyer_account_id"], row["currency"], row["rail"])
            self._refs[channel_id] = ref
        return ref

    def _batch(self, tx: Tx) -> _Held | None:
        """The held writes of ``tx`` (buffered only; a rolled-back batch's are dropped)."""
        if not self.buffered:
            return None
        if self._held is None or self._held.tx is not tx:
            self._held = _Held(tx)
        return self._held

    def _post(self, tx: Tx, event: Any, position: int, kind: str, postings: list[Posting]) -> None:
        ledger.check_balanced(postings)
        at = event.timestamp.isoformat()
        channel_id = str(event.originator_id)
        rows = [(position, i, p.account, p.currency, p.amount_minor, kind, channel_id, at)
                for i, p in enumerate(postings)]
        held = self._batch(tx)
        if held is None:
            tx.executemany(POSTING_SQL, rows)
            tx.executemany(BALANCE_SQL, [(p.account, p.currency, p.amount_minor) for p in postings])
            return
        held.postings += rows
        for p in postings:
            key = (p.account, p.currency)
            held.balances[key] = held.balances.get(key, 0) + p.amount_minor

    def flush(self, tx: Tx) -> None:
        held, self._held = self._held, None
        if held is None or held.tx is not tx:
            return
        if held.postings:
            tx.executemany(self._postings(tx, held.postings), held.postings)
        if held.balances:
            tx.executemany(BALANCE_SQL, [(*key, amount) for key, amount in held.balances.items()])
        if held.spent:
            tx.executemany(SPENT_SQL, [(amount, fee, channel_id) for channel_id, (amount, fee) in held.spent.items()])
        if held.earnings:
            tx.executemany(EARNINGS_SQL, [(*key, *sums) for key, sums in held.earnings.items()])

    @staticmethod
    def _postings(tx: Tx, rows: list[tuple[Any, ...]]) -> str:
        """The statement for a batch's postings: without ON CONFLICT when its keys (position,
        seq) are distinct and no stored posting is at or after its first position (so DO NOTHING
        could skip none), else the one that skips conflicts as the per-event path does."""
        first = min(r[0] for r in rows)
        if len({(r[0], r[1]) for r in rows}) != len(rows) or tx.fetchone(
                "SELECT 1 AS found FROM ledger_postings WHERE position >= ? LIMIT 1", (first,)):
            return POSTING_SQL
        return POSTING_NEW_SQL

    def _channel(self, tx: Tx, channel_id: str, sql_set: str, params: tuple[Any, ...]) -> None:
        tx.execute(f"UPDATE money_channels SET {sql_set} WHERE channel_id = ?", (*params, channel_id))  # noqa: S608

    # -- handlers ---------------------------------------------------------------------------------
    @singledispatchmethod
    def process(self, event: Any, tx: Tx, position: int) -> None:
        """Ignore other events."""

    @process.register
    def _opened(self, event: Channel.Opened, tx: Tx, position: int) -> None:
        channel_id = str(event.originator_id)
        tx.execute(
            "INSERT INTO money_channels VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, 0, 0, ?, ?, NULL, 0, 0)"
            " ON CONFLICT (channel_id) DO NOTHING",
            (channel_id, event.buyer_account_id, event.currency, event.rail,
             "open" if event.deposit_minor else "pending", event.deposit_minor, event.expiry_s,
             event.timestamp.isoformat()))
        if self.buffered:  # the row just held back says what its reading would: no round trip
            self._refs.setdefault(channel_id, ChannelRef(channel_id, event.buyer_account_id, event.currency, event.rail))
        if event.deposit_minor:
            self._post(tx, event, position, "funded", ledger.funded(self._ref(tx, channel_id), event.deposit_minor))

    @process.register
    def _topped_up(self, event: Channel.ToppedUp, tx: Tx, position: int) -> None:
        channel_id = str(event.originator_id)
        self._channel(tx, channel_id, "deposit_minor = deposit_minor + ?, status = 'open'", (event.amount_minor,))
        self._post(tx, event, position, "funded", ledger.funded(self._ref(tx, channel_id), event.amount_minor))

    @process.register
    def _late_payment(self, event: Channel.LatePaymentReceived, tx: Tx, position: int) -> None:
        channel_id = str(event.originator_id)  # settled stays settled; its Refunded follows
        self._channel(tx, channel_id, "deposit_minor = deposit_minor + ?", (event.amount_minor,))
        self._post(tx, event, position, "funded", ledger.funded(self._ref(tx, channel_id), event.amount_minor))

    @process.register
    def _voucher(self, event: Channel.VoucherRecorded, tx: Tx, position: int) -> None:
        self._channel(tx, str(event.originator_id), "voucher_minor = ?", (event.cumulative_minor,))

    @process.register
    def _debited(self, event: Channel.Debited, tx: Tx, position: int) -> None:
        channel_id = str(event.originator_id)
        ref = self._ref(tx, channel_id)
        amount, fee = event.amount_minor, event.fee_minor
        self._post(tx, event, position, "debit", ledger.debited(ref, amount, fee, event.seller_account_id))
        held = self._batch(tx)
        if held is None:
            tx.execute(SPENT_SQL, (amount, fee, channel_id))
            tx.execute(EARNINGS_SQL, (event.seller_account_id, ref.currency, channel_id, amount, fee, amount - fee, 1))
            return
        spent = held.spent.setdefault(channel_id, [0, 0])
        spent[0] += amount
        spent[1] += fee
        sums = held.earnings.setdefault((event.seller_account_id, ref.currency, channel_id), [0, 0, 0, 0])
        for i, delta in enumerate((amount, fee, amount - fee, 1)):
            sums[i] += delta

    @process.register
    def _hold_placed(self, event: Channel.HoldPlaced, tx: Tx, position: int) -> None:
        channel_id = str(event.originator_id)  # a hold moves no money: no postings
        self._channel(tx, channel_id, "held_minor = held_minor + ?", (event.amount_minor,))
        tx.execute("INSERT INTO money_holds VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                   (event.invocation_id, channel_id, event.amount_minor, event.lapse_at_s))

    @process.register
    def _hold_released(self, event: Channel.HoldReleased, tx: Tx, position: int) -> None:
        channel_id = str(event.originator_id)  # the capture's Debited follows with the postings
        self._channel(tx, channel_id, "held_minor = held_minor - ?", (event.captured_minor + event.released_minor,))
        tx.execute("DELETE FROM money_holds WHERE invocation_id = ?", (event.invocation_id,))

    @process.register
    def _close_requested(self, event: Channel.CloseRequested, tx: Tx, position: int) -> None:
        self._channel(tx, str(event.originator_id), "status = 'closing'", ())

    @process.register
    def _expired(self, event: Channel.Expired, tx: Tx, position: int) -> None:
        self._channel(tx, str(event.originator_id), "status = 'closing'", ())

    @process.register
    def _settled(self, event: Channel.Settled, tx: Tx, position: int) -> None:
        channel_id = str(event.originator_id)
        self._channel(tx, channel_id, "status = 'settled', settled_minor = ?, settlement_ref = ?",
                      (event.cumulative_minor, event.settlement_ref))
        postings = ledger.settled(self._ref(tx, channel_id), event.seller_amounts, event.seller_reversed,
                                  event.fee_reversed_minor)
        if postings:
            self._post(tx, event, position, "settled", postings)

    @process.register
    def _refunded(self, event: Channel.Refunded, tx: Tx, position: int) -> None:
        channel_id = str(event.originator_id)
        ref = self._ref(tx, channel_id)
        # Card refunds still have to reach Stripe (the refund sweep); chain ones are paid by the contract.
        pending = event.amount_minor if ref.rail == "card" else 0
        self._channel(tx, channel_id, "refunded_minor = refunded_minor + ?,"
                      " card_refund_pending_minor = card_refund_pending_minor + ?", (event.amount_minor, pending))
        self._post(tx, event, position, "refund", ledger.refunded(ref, event.amount_minor))

    @process.register
    def _card_refund_sent(self, event: Channel.CardRefundSent, tx: Tx, position: int) -> None:
        self._channel(tx, str(event.originator_id), "card_refund_pending_minor = card_refund_pending_minor - ?",
                      (event.amount_minor,))

    @process.register
    def _card_refund_failed(self, event: Channel.CardRefundFailed, tx: Tx, position: int) -> None:
        channel_id = str(event.originator_id)
        if not getattr(event, "after_sent", False):  # after CardRefundSent it is no longer pending
            self._channel(tx, channel_id, "card_refund_pending_minor = card_refund_pending_minor - ?",
                          (event.amount_minor,))
        self._post(tx, event, position, "refund_reversed",
                   ledger.card_refund_reversed(self._ref(tx, channel_id), event.amount_minor))

    @process.register
    def _card_refund_resolved(self, event: Channel.CardRefundResolved, tx: Tx, position: int) -> None:
        channel_id = str(event.originator_id)
        self._post(tx, event, position, "refund_resolved",
                   ledger.card_refund_resolved(self._ref(tx, channel_id), event.amount_minor))

    @process.register
    def _payouts_started(self, event: SellerPayouts.Started, tx: Tx, position: int) -> None:
        tx.execute("INSERT INTO payout_owners VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                   (str(event.originator_id), event.seller_account_id, event.currency))

    @process.register
    def _payout_requested(self, event: SellerPayouts.PayoutRequested, tx: Tx, position: int) -> None:
        seller, currency = self._payout_owner(tx, event)
        tx.execute("INSERT INTO payouts VALUES (?, ?, ?, ?, 'requested', NULL, NULL, ?) ON CONFLICT DO NOTHING",
                   (event.payout_id, seller, currency, event.amount_minor, event.timestamp.isoformat()))
        self._post(tx, event, position, "payout", ledger.paid_out(seller, currency, event.amount_minor))

    @process.register
    def _payout_sent(self, event: SellerPayouts.PayoutSent, tx: Tx, position: int) -> None:
        tx.execute("UPDATE payouts SET status = 'sent', transfer_id = ? WHERE payout_id = ?",
                   (event.transfer_id, event.payout_id))

    @process.register
    def _payout_failed(self, event: SellerPayouts.PayoutFailed, tx: Tx, position: int) -> None:
        status = "retrying" if event.retryable else "failed"
        tx.execute("UPDATE payouts SET status = ?, reason = ? WHERE payout_id = ?",
                   (status, event.reason, event.payout_id))
        if not event.retryable:
            row = tx.fetchone("SELECT seller_account_id, currency, amount_minor FROM payouts WHERE payout_id = ?",
                              (event.payout_id,))
            assert row is not None
            self._post(tx, event, position, "payout_reversed",
                       ledger.payout_reversed(row["seller_account_id"], row["currency"], int(row["amount_minor"])))

    def _payout_owner(self, tx: Tx, event: Any) -> tuple[str, str]:
        key = f"payouts:{event.originator_id}"
        ref = self._refs.get(key)
        if ref is None:
            row = tx.fetchone("SELECT seller_account_id, currency FROM payout_owners WHERE aggregate_id = ?",
                              (str(event.originator_id),))
            assert row is not None
            ref = ChannelRef(key, row["seller_account_id"], row["currency"], "card")
            self._refs[key] = ref
        return ref.buyer_account_id, ref.currency


# -- queries ---------------------------------------------------------------------------------------
def balances_of(db: Any, account_id: str | None) -> list[dict[str, Any]]:
    """An account's ledger accounts (its channels and payable); every account for ``None``."""
    if account_id is None:
        return db.fetchall("SELECT * FROM ledger_balances ORDER BY account, currency")
    return db.fetchall(
        "SELECT * FROM ledger_balances WHERE account LIKE ? OR account = ? ORDER BY account, currency",
        (f"buyer:{account_id}:channel:%", f"seller:{account_id}:payable"))


def channels_of(db: Any, account_id: str, limit: int = 100) -> list[dict[str, Any]]:
    return db.fetchall("SELECT * FROM money_channels WHERE buyer_account_id = ? ORDER BY opened_at DESC LIMIT ?",
                       (account_id, limit))


def channels_due(db: Any, now_s: int, margin_s: int, limit: int = 500) -> list[dict[str, Any]]:
    """Channels to close or settle: closing ones, and open/pending ones near expiry."""
    return db.fetchall(
        "SELECT channel_id, status, rail FROM money_channels WHERE status = 'closing'"
        " OR (status IN ('open', 'pending') AND expiry_s <= ?) ORDER BY expiry_s LIMIT ?",
        (now_s + margin_s, limit))


def holds_due(db: Any, now_s: int, limit: int = 500) -> list[dict[str, Any]]:
    """Open holds whose lapse time has passed (the lapse sweep releases them)."""
    return db.fetchall("SELECT invocation_id, channel_id, amount_minor, lapse_at_s FROM money_holds"
                       " WHERE lapse_at_s <= ? ORDER BY lapse_at_s LIMIT ?", (now_s, limit))


def chain_channels_settling(db: Any, after: str = "", limit: int = 500) -> list[dict[str, Any]]:
    """Chain channels closing or settled, by id after ``after`` (a page of the reconcile sweep)."""
    return db.fetchall(
        "SELECT channel_id, status FROM money_channels WHERE rail = 'chain' AND status IN ('closing', 'settled')"
        " AND channel_id > ? ORDER BY channel_id LIMIT ?", (after, limit))


def card_refunds_due(db: Any, limit: int = 500) -> list[dict[str, Any]]:
    """Settled card channels whose refund has parts not yet sent to Stripe (nor refused)."""
    return db.fetchall(
        "SELECT channel_id FROM money_channels WHERE card_refund_pending_minor > 0 AND rail = 'card'"
        " AND status = 'settled' ORDER BY channel_id LIMIT ?", (limit,))


def earnings_of(db: Any, seller_account_id: str) -> list[dict[str, Any]]:
    return db.fetchall("SELECT * FROM seller_earnings WHERE seller_account_id = ? ORDER BY currency, channel_id",
                       (seller_account_id,))


def earned_card_minor(db: Any) -> list[dict[str, Any]]:
    """Per seller and currency: net earned on card-funded channels (what payouts may pay)."""
    return db.fetchall(
        "SELECT e.seller_account_id, e.currency, SUM(e.net_minor) AS earned_minor FROM seller_earnings e"
        " JOIN money_channels c ON c.channel_id = e.channel_id WHERE c.rail = 'card'"
        " GROUP BY e.seller_account_id, e.currency ORDER BY e.seller_account_id, e.currency")


def statement_of(db: Any, seller_account_id: str) -> dict[str, Any]:
    """A seller's statement: earnings per channel, totals per currency, payouts."""
    earnings = earnings_of(db, seller_account_id)
    totals: dict[str, dict[str, int]] = {}
    for row in earnings:
        t = totals.setdefault(row["currency"], {"gross_minor": 0, "fee_minor": 0, "net_minor": 0})
        for name in t:
            t[name] += int(row[name])
    payouts = db.fetchall("SELECT * FROM payouts WHERE seller_account_id = ? ORDER BY requested_at",
                          (seller_account_id,))
    payable = db.fetchall("SELECT currency, balance_minor FROM ledger_balances WHERE account = ?",
                          (f"seller:{seller_account_id}:payable",))
    return {"seller_account_id": seller_account_id, "earnings": earnings,
            "totals": [{"currency": c, **t} for c, t in sorted(totals.items())], "payouts": payouts,
            "payable": payable}
