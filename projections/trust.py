"""Trust scores as a read model: the facts each score is taken from, and the scores.

The projection's clock is the latest event time it has processed (``trust_clock``), never
the wall clock: a rebuild from position 0 yields the same rows. A device whose facts changed
is marked (``trust_dirty``); when the clock enters a new minute the marked devices and their
accounts are scored at that clock, and when it enters a new hour every subject is (so a fact
leaves the 30-day window even when its seller is silent). A heartbeat in an hour already
covered changes nothing. A score therefore trails its latest fact by at most a minute of
event time (the next event after it scores it; a live hub hears heartbeats all the time).

Compute sessions (``trust_sessions``) come from ``Invocation.Opened`` / ``Captured`` /
``Lapsed`` and from refused ``invoke_final`` traces (``docs/trust.md``, "Compute").

Scores are pushed into the search read model (``search_listings.trust_score`` of the
device's listings, with a fresh ``seq`` so query processes pick the change up); the search
projection reads ``trust_scores`` when it indexes a new listing. Either rebuilt alone ends
in the same state. The formula is ``domain.model.trust`` (``docs/trust.md``).
"""

from __future__ import annotations

import json
from functools import singledispatchmethod
from typing import Any

from domain.model.channel import Channel
from domain.model.device import Device
from domain.model.invocation import Invocation
from domain.model.payout import PayoutDestination
from domain.model.ports import Tx, ViewDB
from domain.model.purchase import Purchase
from domain.model.traces import Signal, Trace
from domain.model.trust import UPTIME_BUCKET_MS, WINDOW_MS, Fact, Facts, PurchaseFact, SessionFact, score
from projections.base import Projection

SCORE_INTERVAL_MS = 60_000  # changed subjects are scored when the event clock enters a new minute
SWEEP_INTERVAL_MS = UPTIME_BUCKET_MS  # every subject, when it enters a new hour
SEARCH_SEQ_LOCK_KEY = 7_346_112_013  # serialises search_listings.seq between search and trust
SCORES_DDL = ("CREATE TABLE IF NOT EXISTS trust_scores (subject TEXT PRIMARY KEY, kind TEXT NOT NULL,"
              " subject_id TEXT NOT NULL, account_id TEXT NOT NULL, score REAL NOT NULL, as_of_ms BIGINT NOT NULL,"
              " breakdown TEXT NOT NULL, position BIGINT NOT NULL)")


def ms_of(event: Any) -> int:
    return int(event.timestamp.timestamp() * 1000)


def ref_of(event: Any, position: int) -> str:
    """How a score names an event: log position, type, aggregate id and version."""
    return f"{position}:{type(event).__qualname__}:{event.originator_id}:{event.originator_version}"


def next_search_seq(tx: Tx, position: int) -> int:
    """A ``seq`` above every row's, so the search index sees the change (under a lock on
    PostgreSQL, taken by both writers of the column, so commits land in ``seq`` order)."""
    if tx.dialect == "postgres":
        tx.execute("SELECT pg_advisory_xact_lock(?)", (SEARCH_SEQ_LOCK_KEY,))
    head = tx.fetchone("SELECT MAX(seq) AS head FROM search_listings")
    return max(position, int((head or {}).get("head") or 0) + 1)


def device_score(tx: Tx | ViewDB, device_id: str) -> float | None:
    row = tx.fetchone("SELECT score FROM trust_scores WHERE subject = ?", (f"device:{device_id}",))
    return None if row is None else float(row["score"])


class TrustProjection(Projection):
    name = "trust"
    version = 2  # 2: compute sessions (trust_sessions)
    event_types = (Device.Enrolled, Device.KeyRotated, Trace.TraceRecorded, Signal.BehaviourSignal,
                   Purchase.Purchased, Purchase.TokenRedeemed, Purchase.Delivered, Purchase.TokenExpired,
                   Purchase.TokenRevoked, Channel.Opened, PayoutDestination.Set, PayoutDestination.Changed,
                   Invocation.Opened, Invocation.Captured, Invocation.Lapsed)
    tables = ("trust_devices", "trust_facts", "trust_purchases", "trust_identities", "trust_scores", "trust_clock",
              "trust_dirty", "trust_sessions")

    def __init__(self) -> None:
        # Buffered only (a rebuild), all of one transaction: the clock row (written once, in
        # flush), devices known to exist, fact ids known to be stored. Each is what the
        # statement it replaces would read or do; a new transaction starts them afresh.
        self._tx: Tx | None = None
        self._clock: tuple[int, int] | None = None
        self._clock_moved = False
        self._known_devices: set[str] = set()
        self._known_facts: set[str] = set()
        self._dirty: set[str] = set()  # devices in trust_dirty (until its DELETE)

    def _cache(self, tx: Tx) -> bool:
        """True when the batch caches apply to ``tx`` (started afresh for a new one)."""
        if not self.buffered:
            return False
        if self._tx is not tx:
            self._tx, self._clock, self._clock_moved = tx, None, False
            self._known_devices, self._known_facts, self._dirty = set(), set(), set()
        return True

    def flush(self, tx: Tx) -> None:
        if self.buffered and self._tx is tx and self._clock_moved and self._clock is not None:
            tx.execute("UPDATE trust_clock SET now_ms = ?, scored_ms = ? WHERE id = 1", self._clock)
            self._clock_moved = False

    def ddl(self, dialect: str) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS trust_devices (device_id TEXT PRIMARY KEY, account_id TEXT NOT NULL,"
            " enrolled_ms BIGINT NOT NULL, key_since_ms BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS trust_devices_account ON trust_devices (account_id)",
            "CREATE TABLE IF NOT EXISTS trust_facts (fact_id TEXT PRIMARY KEY, device_id TEXT NOT NULL,"
            " kind TEXT NOT NULL, at_ms BIGINT NOT NULL, code TEXT NOT NULL, signal_kind TEXT NOT NULL,"
            " ref TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS trust_facts_device ON trust_facts (device_id, at_ms)",
            "CREATE TABLE IF NOT EXISTS trust_purchases (purchase_id TEXT PRIMARY KEY, device_id TEXT NOT NULL,"
            " account_id TEXT NOT NULL, buyer_account_id TEXT NOT NULL, price_minor BIGINT NOT NULL,"
            " start_by_ms BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL, redeemed BOOLEAN NOT NULL,"
            " delivered_at_ms BIGINT, revoked BOOLEAN NOT NULL, expired_reason TEXT NOT NULL, outcome_ms BIGINT,"
            " refs TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS trust_purchases_device ON trust_purchases (device_id, outcome_ms)",
            "CREATE TABLE IF NOT EXISTS trust_sessions (invocation_id TEXT PRIMARY KEY, device_id TEXT NOT NULL,"
            " buyer_account_id TEXT NOT NULL, budget_minor BIGINT NOT NULL, outcome TEXT NOT NULL,"
            " countersigned BOOLEAN NOT NULL, outcome_ms BIGINT, refs TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS trust_sessions_device ON trust_sessions (device_id, outcome_ms)",
            "CREATE TABLE IF NOT EXISTS trust_identities (source_id TEXT PRIMARY KEY, account_id TEXT NOT NULL,"
            " identity TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS trust_identities_account ON trust_identities (account_id)",
            SCORES_DDL,
            "CREATE INDEX IF NOT EXISTS trust_scores_account ON trust_scores (account_id)",
            "CREATE TABLE IF NOT EXISTS trust_clock (id INTEGER PRIMARY KEY, now_ms BIGINT NOT NULL,"
            " scored_ms BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS trust_dirty (device_id TEXT PRIMARY KEY)",
        ]

    @singledispatchmethod
    def process(self, event: Any, tx: Tx, position: int) -> None:
        """Ignore other events."""

    # -- facts --------------------------------------------------------------------------------
    @process.register
    def _enrolled(self, event: Device.Enrolled, tx: Tx, position: int) -> None:
        at_ms = ms_of(event)
        tx.execute("INSERT INTO trust_devices VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO NOTHING",
                   (str(event.originator_id), event.account_id, at_ms, at_ms))
        if self._cache(tx):
            self._known_devices.add(str(event.originator_id))
        self._after(tx, position, at_ms, str(event.originator_id))

    @process.register
    def _rotated(self, event: Device.KeyRotated, tx: Tx, position: int) -> None:
        device_id, at_ms = str(event.originator_id), ms_of(event)
        tx.execute("UPDATE trust_devices SET key_since_ms = ? WHERE device_id = ?", (at_ms, device_id))
        self._fact(tx, ref_of(event, position), device_id, "rotation", at_ms)
        self._after(tx, position, at_ms, device_id)

    @process.register
    def _trace(self, event: Trace.TraceRecorded, tx: Tx, position: int) -> None:
        at_ms = ms_of(event)
        if event.kind == "invoke_final" and event.effect == "refused":
            entry = (event.envelope.get("credentialSubject") or {}).get("entry") or {}
            invocation_id = (entry.get("body") or {}).get("invocation_id")
            self._session(tx, event, position, str(invocation_id), "refused", reporter=event.device_id)
            return
        if event.kind != "heartbeat":
            self._tick(tx, position, at_ms)
            return
        hour = at_ms // UPTIME_BUCKET_MS
        # One row an hour: the first heartbeat of the hour is the one a score names.
        if self._fact(tx, ref_of(event, position), event.device_id, "heartbeat", hour * UPTIME_BUCKET_MS,
                      fact_id=f"hb:{event.device_id}:{hour}"):
            self._after(tx, position, at_ms, event.device_id)
        else:
            self._tick(tx, position, at_ms)

    @process.register
    def _signal(self, event: Signal.BehaviourSignal, tx: Tx, position: int) -> None:
        at_ms = ms_of(event)
        self._fact(tx, ref_of(event, position), event.device_id, "signal", at_ms, code=event.code,
                   signal_kind=event.kind)
        self._after(tx, position, at_ms, event.device_id)

    @process.register
    def _purchased(self, event: Purchase.Purchased, tx: Tx, position: int) -> None:
        tx.execute("INSERT INTO trust_purchases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                   " ON CONFLICT (purchase_id) DO NOTHING",
                   (str(event.originator_id), event.seller_device_id, event.seller_account_id,
                    event.buyer_account_id, event.price_minor, event.start_by_s * 1000, event.expires_at_s * 1000,
                    False, None, False, "", None, json.dumps([ref_of(event, position)])))
        self._tick(tx, position, ms_of(event))

    @process.register
    def _redeemed(self, event: Purchase.TokenRedeemed, tx: Tx, position: int) -> None:
        self._purchase(tx, event, position, redeemed=True)

    @process.register
    def _delivered(self, event: Purchase.Delivered, tx: Tx, position: int) -> None:
        self._purchase(tx, event, position, delivered_at_ms=event.delivered_at_ms, outcome_ms=ms_of(event))

    @process.register
    def _expired(self, event: Purchase.TokenExpired, tx: Tx, position: int) -> None:
        self._purchase(tx, event, position, expired_reason=event.reason, outcome_ms=ms_of(event))

    @process.register
    def _revoked(self, event: Purchase.TokenRevoked, tx: Tx, position: int) -> None:
        self._purchase(tx, event, position, revoked=True, outcome_ms=ms_of(event))

    @process.register
    def _opened(self, event: Channel.Opened, tx: Tx, position: int) -> None:
        wallet = getattr(event, "buyer_wallet", "") or ""  # card channels have none
        if wallet:
            self._identity(tx, str(event.originator_id), event.buyer_account_id, f"wallet:{wallet.lower()}")
        self._tick(tx, position, ms_of(event))

    @process.register
    def _payout_set(self, event: PayoutDestination.Set, tx: Tx, position: int) -> None:
        self._identity(tx, str(event.originator_id), event.account_id, f"payout:{event.stripe_account}")
        self._tick(tx, position, ms_of(event))

    @process.register
    def _payout_changed(self, event: PayoutDestination.Changed, tx: Tx, position: int) -> None:
        # The old destination stays an identity of the account (a new row per change).
        row = tx.fetchone("SELECT account_id FROM trust_identities WHERE source_id = ?", (str(event.originator_id),))
        if row is not None:
            self._identity(tx, f"{event.originator_id}:{event.originator_version}", row["account_id"],
                           f"payout:{event.stripe_account}")
        self._tick(tx, position, ms_of(event))

    @process.register
    def _invocation_opened(self, event: Invocation.Opened, tx: Tx, position: int) -> None:
        tx.execute("INSERT INTO trust_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (invocation_id) DO NOTHING",
                   (str(event.originator_id), event.seller_device_id, event.buyer_account_id, event.budget_minor,
                    "", False, None, json.dumps([ref_of(event, position)])))
        self._tick(tx, position, ms_of(event))

    @process.register
    def _invocation_captured(self, event: Invocation.Captured, tx: Tx, position: int) -> None:
        self._session(tx, event, position, str(event.originator_id), "captured",
                      countersigned=event.countersigned_minor > 0)

    @process.register
    def _invocation_lapsed(self, event: Invocation.Lapsed, tx: Tx, position: int) -> None:
        self._session(tx, event, position, str(event.originator_id), "lapsed")

    def _session(self, tx: Tx, event: Any, position: int, invocation_id: str, outcome: str, *,
                 countersigned: bool = False, reporter: str | None = None) -> None:
        """A session is decided once: by its capture (which wins over an earlier refused report
        of it), else by the first refused final report or its lapse. A refused report counts
        only when the session's own seller device sent it."""
        row = tx.fetchone("SELECT device_id, outcome, refs FROM trust_sessions WHERE invocation_id = ?",
                          (invocation_id,))
        decided = row is not None and row["outcome"] != "" and not (outcome == "captured"
                                                                    and row["outcome"] == "refused")
        if row is None or decided or (reporter is not None and reporter != row["device_id"]):
            self._tick(tx, position, ms_of(event))
            return
        tx.execute("UPDATE trust_sessions SET outcome = ?, countersigned = ?, outcome_ms = ?, refs = ?"
                   " WHERE invocation_id = ?", (outcome, countersigned, ms_of(event),
                                                json.dumps([*json.loads(row["refs"]), ref_of(event, position)]),
                                                invocation_id))
        self._after(tx, position, ms_of(event), row["device_id"])

    def _fact(self, tx: Tx, ref: str, device_id: str, kind: str, at_ms: int, *, code: str = "",
              signal_kind: str = "", fact_id: str | None = None) -> bool:
        fact_id = fact_id or ref
        cached = self._cache(tx)
        if cached and fact_id in self._known_facts:
            return False  # stored already: the INSERT would do nothing
        inserted = bool(tx.execute("INSERT INTO trust_facts VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fact_id)"
                                   " DO NOTHING", (fact_id, device_id, kind, at_ms, code, signal_kind, ref)))
        if cached:
            self._known_facts.add(fact_id)
        return inserted

    def _identity(self, tx: Tx, source_id: str, account_id: str, identity: str) -> None:
        tx.execute("INSERT INTO trust_identities VALUES (?, ?, ?) ON CONFLICT (source_id) DO NOTHING",
                   (source_id, account_id, identity))

    def _purchase(self, tx: Tx, event: Any, position: int, **changes: Any) -> None:
        purchase_id = str(event.originator_id)
        row = tx.fetchone("SELECT device_id, refs FROM trust_purchases WHERE purchase_id = ?", (purchase_id,))
        if row is None:  # impossible in log order
            return
        changes["refs"] = json.dumps([*json.loads(row["refs"]), ref_of(event, position)])
        tx.execute(f"UPDATE trust_purchases SET {', '.join(f'{n} = ?' for n in changes)}"  # noqa: S608
                   " WHERE purchase_id = ?", (*changes.values(), purchase_id))
        self._after(tx, position, ms_of(event), row["device_id"])

    # -- scoring ------------------------------------------------------------------------------
    def _tick(self, tx: Tx, position: int, at_ms: int) -> None:
        """Advance the clock. When it enters a new minute, score the subjects whose facts
        changed; when it enters a new hour, score every subject (facts age out of the window).

        Scoring at event-time boundaries, not per event, keeps a busy seller's rebuild linear
        and stays a function of the log: the same events give the same scores however they
        are batched."""
        cached = self._cache(tx)
        clock = self._clock if cached else None
        if clock is None:
            row = tx.fetchone("SELECT now_ms, scored_ms FROM trust_clock WHERE id = 1")
            if row is None:
                tx.execute("INSERT INTO trust_clock VALUES (1, ?, ?)", (at_ms, at_ms))
                if cached:
                    self._clock = (at_ms, at_ms)
                return
            clock = (int(row["now_ms"]), int(row["scored_ms"]))
        now_ms, scored_ms = max(clock[0], at_ms), clock[1]
        if now_ms // SCORE_INTERVAL_MS > scored_ms // SCORE_INTERVAL_MS:
            every = now_ms // SWEEP_INTERVAL_MS > scored_ms // SWEEP_INTERVAL_MS
            devices = tx.fetchall("SELECT device_id FROM trust_devices ORDER BY device_id" if every else
                                  "SELECT device_id FROM trust_dirty ORDER BY device_id")
            for row in devices:
                self._score_device(tx, position, now_ms, row["device_id"])
            accounts = tx.fetchall("SELECT DISTINCT account_id FROM trust_devices ORDER BY account_id" if every else
                                   "SELECT DISTINCT account_id FROM trust_devices WHERE device_id IN"
                                   " (SELECT device_id FROM trust_dirty) ORDER BY account_id")
            for row in accounts:
                self._score_account(tx, position, now_ms, row["account_id"])
            tx.execute("DELETE FROM trust_dirty")
            self._dirty.clear()
            scored_ms = now_ms
        if cached:  # written once, in flush
            self._clock, self._clock_moved = (now_ms, scored_ms), True
            return
        tx.execute("UPDATE trust_clock SET now_ms = ?, scored_ms = ? WHERE id = 1", (now_ms, scored_ms))

    def _after(self, tx: Tx, position: int, at_ms: int, device_id: str) -> None:
        """A fact of ``device_id`` changed: score it (and its account) at the next minute."""
        cached = self._cache(tx)
        known = cached and device_id in self._known_devices
        if known or tx.fetchone("SELECT 1 AS known FROM trust_devices WHERE device_id = ?", (device_id,)) is not None:
            if cached:
                self._known_devices.add(device_id)
                if device_id in self._dirty:  # in trust_dirty already: the INSERT would do nothing
                    self._tick(tx, position, at_ms)
                    return
                self._dirty.add(device_id)
            tx.execute("INSERT INTO trust_dirty VALUES (?) ON CONFLICT (device_id) DO NOTHING", (device_id,))
        self._tick(tx, position, at_ms)

    def _score_device(self, tx: Tx, position: int, now_ms: int, device_id: str) -> None:
        result = score(load_facts(tx, [device_id], now_ms), now_ms)
        account = tx.fetchone("SELECT account_id FROM trust_devices WHERE device_id = ?", (device_id,))
        changed = self._store(tx, position, "device", device_id, account["account_id"], result)
        if changed and _has_table(tx, "search_listings"):
            seq = next_search_seq(tx, position)
            tx.execute("UPDATE search_listings SET trust_score = ?, seq = ? WHERE device_id = ?",
                       (result["score"], seq, device_id))

    def _score_account(self, tx: Tx, position: int, now_ms: int, account_id: str) -> None:
        devices = [r["device_id"] for r in tx.fetchall(
            "SELECT device_id FROM trust_devices WHERE account_id = ? ORDER BY device_id", (account_id,))]
        self._store(tx, position, "account", account_id, account_id, score(load_facts(tx, devices, now_ms), now_ms))

    def _store(self, tx: Tx, position: int, kind: str, subject_id: str, account_id: str,
               result: dict[str, Any]) -> bool:
        """Upsert one score; True when the number changed (the breakdown may change alone)."""
        subject = f"{kind}:{subject_id}"
        old = tx.fetchone("SELECT score FROM trust_scores WHERE subject = ?", (subject,))
        tx.execute("INSERT INTO trust_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (subject) DO UPDATE SET"
                   " score = excluded.score, as_of_ms = excluded.as_of_ms, breakdown = excluded.breakdown,"
                   " position = excluded.position",
                   (subject, kind, subject_id, account_id, result["score"], result["as_of_ms"],
                    json.dumps(result, sort_keys=True), position))
        return old is None or float(old["score"]) != result["score"]


def load_facts(tx: Tx | ViewDB, device_ids: list[str], now_ms: int) -> Facts:
    """The facts of some devices of one account inside the window ending at ``now_ms``."""
    start_ms = now_ms - WINDOW_MS
    enrolled: dict[str, int] = {}
    key_since: dict[str, int] = {}
    facts: list[Fact] = []
    purchases: list[PurchaseFact] = []
    sessions: list[SessionFact] = []
    account_id = ""
    for device_id in device_ids:
        d = tx.fetchone("SELECT * FROM trust_devices WHERE device_id = ?", (device_id,))
        if d is None:
            continue
        account_id = d["account_id"]
        enrolled[device_id], key_since[device_id] = int(d["enrolled_ms"]), int(d["key_since_ms"])
        facts += [Fact(r["device_id"], r["kind"], int(r["at_ms"]), r["ref"], r["code"], r["signal_kind"])
                  for r in tx.fetchall("SELECT * FROM trust_facts WHERE device_id = ? AND at_ms >= ? ORDER BY fact_id",
                                       (device_id, start_ms))]
        purchases += [PurchaseFact(r["purchase_id"], r["buyer_account_id"], int(r["price_minor"]),
                                   int(r["start_by_ms"]), int(r["expires_at_ms"]), bool(r["redeemed"]),
                                   r["delivered_at_ms"], bool(r["revoked"]), r["expired_reason"], r["outcome_ms"],
                                   tuple(json.loads(r["refs"])))
                      for r in tx.fetchall("SELECT * FROM trust_purchases WHERE device_id = ? AND outcome_ms >= ?"
                                           " ORDER BY purchase_id", (device_id, start_ms))]
        sessions += [SessionFact(r["invocation_id"], r["buyer_account_id"], int(r["budget_minor"]), r["outcome"],
                                 bool(r["countersigned"]), r["outcome_ms"], tuple(json.loads(r["refs"])))
                     for r in tx.fetchall("SELECT * FROM trust_sessions WHERE device_id = ? AND outcome_ms >= ?"
                                          " ORDER BY invocation_id", (device_id, start_ms))]
    accounts = sorted({account_id, *(p.buyer_account_id for p in purchases), *(s.buyer_account_id for s in sessions)})
    identities: dict[str, set[str]] = {}
    for a in accounts:
        for r in tx.fetchall("SELECT identity FROM trust_identities WHERE account_id = ?", (a,)):
            identities.setdefault(a, set()).add(r["identity"])
    return Facts(account_id, enrolled, key_since, facts, purchases,
                 {a: frozenset(ids) for a, ids in identities.items()}, sessions)


def _has_table(tx: Tx, table: str) -> bool:
    if tx.dialect == "postgres":
        row = tx.fetchone("SELECT to_regclass(CAST(? AS TEXT)) IS NOT NULL AS found", (table,))
    else:
        row = tx.fetchone("SELECT COUNT(*) > 0 AS found FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    return bool(row and row["found"])


# -- reading ------------------------------------------------------------------------------------
def trust_of(views: ViewDB, kind: str, subject_id: str) -> dict[str, Any] | None:
    """A stored score with its breakdown and sources, or None if the subject has none."""
    row = views.fetchone("SELECT * FROM trust_scores WHERE subject = ?", (f"{kind}:{subject_id}",))
    if row is None:
        return None
    return {"kind": kind, "id": subject_id, "account_id": row["account_id"], **json.loads(row["breakdown"]),
            "position": int(row["position"]), "scored": True}
