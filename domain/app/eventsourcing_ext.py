"""Every override of an eventsourcing internal, in one module.

Written for eventsourcing 9.5.6 (``tests/app/test_eventsourcing_ext.py`` pins it): an
upgrade of the library touches this file and its test, nothing else.

* ``FastSaveApplication``: the library's ``save`` (record, snapshot, notify) with a plain
  class check instead of ``isinstance`` against runtime-checkable protocols (~7 us per
  object on Python 3.11, a sixth of a debit batch's CPU), and snapshots taken from the
  saved object instead of a reload from the store.
* ``ArrayInsertRecorder`` (chosen through ``APPLICATION_RECORDER_TOPIC``): the PostgreSQL
  application recorder with a cheaper insert. The library sends a batch of events as ONE
  array of a composite type, which psycopg renders as text, escaping every field with a
  regular expression (a tenth of a debit batch's CPU). Here the same batch goes as four
  plain arrays (ids, versions, topics, states), which psycopg dumps natively. Everything
  else is the library's: the table lock that keeps notification ids in commit order, the
  NOTIFY, the ids returned, the transaction.
* ``pending_stored_events`` and ``insert_statements``: what the async debit writer
  (``ops.adapters.postgres_async``) needs to record a batch exactly as the recorder would.
* ``FastJSONTranscoder`` (``construct_transcoder``): the library's JSON transcoder, decoding
  with orjson where the result is provably the library's (below), else exactly as the library
  does. Decoding was a third of the audit walk's and the rebuild's CPU per event.
* ``AuthenticatedSnapshotStore`` (``construct_snapshot_store``): every snapshot is sealed
  with an HMAC-SHA256 under a platform key, bound to the aggregate id, its version, the log
  position of the event it reflects, the topic and the digest of the stored bytes. A
  snapshot whose seal fails (an edited ``deposit_minor``, a row copied to another aggregate
  or version, an unsealed one) is ignored, so the aggregate is rebuilt from its events, and
  reported (a ``snapshot.refused`` log line; ``aimarket audit verify`` checks every one).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from uuid import UUID

import orjson
import structlog
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import EventStore, JSONTranscoder, StoredEvent, Transcoder
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from domain.model.base import MarketAggregate

LIBRARY_VERSION = "9.5.6"
log = structlog.get_logger("snapshots")
SNAPSHOT_KEY_INFO = "snapshots:mac-v1"  # the HKDF label of the snapshot MAC key
SEAL_MAGIC = b"\x00aimarket-sealed-snapshot-v1\x00"  # a leading NUL: never the start of JSON
SEAL_BYTES = len(SEAL_MAGIC) + 8 + 32  # magic, position, MAC


class FastSaveApplication(Application[UUID]):
    """``Application`` with a cheaper ``save`` and snapshots from the saved object."""

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        processing_event: ProcessingEvent = ProcessingEvent()
        for obj in objs:
            if isinstance(obj, MarketAggregate):
                processing_event.events.extend(obj.collect_events())
                processing_event.aggregates[obj.id] = obj
            else:
                processing_event.collect_events(obj)
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        positions = {(r.notification.originator_id, r.notification.originator_version): r.notification.id
                     for r in recordings}
        self._take_snapshots(processing_event, positions)
        self._notify(recordings)
        return recordings

    def construct_transcoder(self) -> Transcoder:
        transcoder = FastJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def construct_snapshot_store(self) -> EventStore:
        recorder = self.factory.aggregate_recorder(purpose="snapshots")
        return AuthenticatedSnapshotStore(self.mapper, recorder, key=self._snapshot_key, positions=self._positions)

    def _snapshot_key(self) -> bytes | None:
        secrets = getattr(self, "secrets", None)  # the Marketplace sets it after the library's __init__
        return None if secrets is None else secrets.derive(SNAPSHOT_KEY_INFO)

    def _positions(self, keys: Sequence[tuple[UUID, int]]) -> dict[tuple[UUID, int], int]:
        """The log positions of events recorded by another writer (the async debit saver)."""
        return positions_of(self.recorder, keys)

    def _take_snapshots(self, processing_event: ProcessingEvent,
                        positions: dict[tuple[Any, int], int] | None = None) -> None:
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
            if positions is None:
                positions = self._positions([(x.originator_id, x.originator_version) for x in snapshots])
            self.snapshots.put_sealed(snapshots, positions)  # type: ignore[attr-defined]

    def pending_stored_events(self, aggregates: Sequence[MarketAggregate]) -> tuple[ProcessingEvent, list[StoredEvent]]:
        """Collect the aggregates' pending events as the recorder would store them."""
        processing_event: ProcessingEvent = ProcessingEvent()
        for aggregate in aggregates:
            processing_event.events.extend(aggregate.collect_events())
            processing_event.aggregates[aggregate.id] = aggregate
        to_stored = self.mapper.to_stored_event
        return processing_event, [to_stored(event) for event in processing_event.events]

    def after_external_record(self, processing_event: ProcessingEvent) -> None:
        """What ``save`` does after recording, for events recorded by another writer."""
        self._take_snapshots(processing_event)


_TYPE_MARK = b'"_type_"'
_DIGITS = bytes(48 if 48 <= i <= 57 else 46 for i in range(256))  # digits -> "0", anything else -> "."
_LONG_NUMBER = b"0" * 19  # orjson reads an integer beyond 64 bits as a float; json keeps it an int


class FastJSONTranscoder(JSONTranscoder):
    """``JSONTranscoder`` whose ``decode`` takes orjson's C parser when that gives the same value.

    The library parses with ``json`` and an object hook (a Python call per JSON object) that
    turns every ``{"_type_": name, "_data_": data}`` into the registered type. The hub's events
    hold such objects only as top-level members with a string ``_data_`` (a timestamp, a UUID,
    a Decimal). So: orjson parses; those members are converted; the result is returned only if
    they were all of the document's ``"_type_"`` marks, with no ``\\u`` escape in the bytes (a
    key spelled with escapes would hide a mark) and no run of 19 digits (orjson reads an
    integer beyond 64 bits as a float). Anything else (a nested or escaped mark, what orjson
    refuses: NaN, Infinity, a lone surrogate, invalid UTF-8) is decoded by the library's own
    path, which also raises its own errors. Where the two parsers agree on plain JSON
    (duplicate keys: the last wins, at the first one's place; floats correctly rounded) a test
    holds them equal (``tests/app/test_fast_transcoder.py``); measured 26.0 against 20.1 us per
    event of the audit bench's log (CPU, best of 5, on a busy machine).
    """

    def decode(self, data: bytes) -> Any:
        if b"\\u" in data or _LONG_NUMBER in data.translate(_DIGITS):
            return super().decode(data)
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return super().decode(data)
        marks = data.count(_TYPE_MARK)
        if marks == 0:
            return value
        if type(value) is dict:
            converted = 0
            members = value.items()
            if marks == 1 and type(value.get("timestamp")) is dict:  # the common case: only the event's time
                members = (("timestamp", value["timestamp"]),)  # type: ignore[assignment]
            for key, member in members:
                if type(member) is dict and len(member) == 2 and type(member.get("_data_")) is str:
                    transcoding = self.names.get(member.get("_type_"))  # type: ignore[arg-type]
                    if transcoding is None:
                        break  # the library raises its own error for an unknown name
                    value[key] = transcoding.decode(member["_data_"])
                    converted += 1
            else:
                if converted == marks:
                    return value
        return super().decode(data)


class ArrayInsertRecorder(PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Binary parameters (%b): the four arrays go out in psycopg's binary format, so no
        # element is quoted or escaped as array text (a regex per element; with %s that was
        # about half of the batch saver's CPU per transaction, issue 9).
        self.insert_arrays_statement = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[]) "
            "RETURNING notification_id"
        ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name),
                 id_type=SQL(self.datastore.originator_id_type))

    def _insert_stored_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent],
                              **kwargs: Any) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(self.insert_arrays_statement, as_arrays(stored_events), prepare=True)


def as_arrays(stored_events: Sequence[StoredEvent]) -> tuple[list[Any], list[int], list[str], list[bytes]]:
    """The parameters of ``insert_arrays_statement``: ids, versions, topics, states."""
    return ([e.originator_id for e in stored_events], [e.originator_version for e in stored_events],
            [e.topic for e in stored_events], [e.state for e in stored_events])


def insert_statements(recorder: ArrayInsertRecorder) -> tuple[list[Any], Any, Any]:
    """The recorder's own statements for one batch: table lock(s), NOTIFY, array insert."""
    notify = SQL("NOTIFY {0}").format(Identifier(recorder.channel_name))
    return list(recorder.lock_table_statements), notify, recorder.insert_arrays_statement


class AuthenticatedSnapshotStore(EventStore):
    """The snapshot store, each record sealed: ``SEAL_MAGIC || position || MAC || library bytes``.

    ``get`` opens the seal before the library decodes anything; a snapshot that fails is
    skipped (the repository then replays the aggregate from its events) and reported.
    """

    def __init__(self, mapper: Any, recorder: Any, *, key: Callable[[], bytes | None],
                 positions: Callable[[Sequence[tuple[UUID, int]]], dict[tuple[UUID, int], int]]) -> None:
        super().__init__(mapper, recorder)
        self.key = key
        self.positions = positions
        self.refused: deque[dict[str, Any]] = deque(maxlen=100)  # the latest refusals, for operators and tests

    def put(self, domain_events: Sequence[Any], **kwargs: Any) -> list[Any]:
        """The library's entry point (``take_snapshot``): positions are looked up."""
        self.put_sealed(domain_events, self.positions([(e.originator_id, e.originator_version) for e in domain_events]))
        return []

    def put_sealed(self, snapshots: Sequence[Any], positions: dict[tuple[Any, int], int]) -> None:
        key = self.key()
        if key is None:
            log.warning("snapshot.not_taken", reason="no platform key to seal it with")
            return
        sealed = []
        for snapshot in snapshots:
            stored = self.mapper.to_stored_event(snapshot)
            position = positions.get((stored.originator_id, stored.originator_version))
            if position is None:
                log.warning("snapshot.not_taken", aggregate_id=str(stored.originator_id),
                            version=stored.originator_version, reason="log position unknown")
                continue
            sealed.append(seal_snapshot(key, stored, position))
        if sealed:
            self.recorder.insert_events(sealed)

    def get(self, originator_id: Any, *, gt: int | None = None, lte: int | None = None, desc: bool = False,
            limit: int | None = None) -> Iterator[Any]:
        key = self.key()
        for record in self.recorder.select_events(originator_id=originator_id, gt=gt, lte=lte, desc=desc, limit=limit):
            try:
                inner, _position = open_snapshot(key, record)
            except SnapshotRefused as exc:
                self._refuse(record, exc.reason)
                continue
            yield self.mapper.to_domain_event(inner)

    def _refuse(self, record: StoredEvent, reason: str) -> None:
        refusal = {"aggregate_id": str(record.originator_id), "version": record.originator_version, "reason": reason}
        self.refused.append(refusal)
        log.warning("snapshot.refused", **refusal, action="rebuilt from its events")


class SnapshotRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def snapshot_mac(key: bytes, originator_id: Any, version: int, position: int, topic: str, state: bytes) -> bytes:
    """HMAC-SHA256 over what a snapshot claims: whose, which version, which log position, what bytes."""
    aggregate = originator_id.bytes if isinstance(originator_id, UUID) else str(originator_id).encode()
    topic_bytes = topic.encode("utf-8")
    message = b"".join([b"aimarket-snapshot-v1\n", len(aggregate).to_bytes(2, "big"), aggregate,
                        version.to_bytes(8, "big"), position.to_bytes(8, "big"), len(topic_bytes).to_bytes(2, "big"),
                        topic_bytes, hashlib.sha256(state).digest()])
    return hmac.new(key, message, hashlib.sha256).digest()


def seal_snapshot(key: bytes, stored: StoredEvent, position: int) -> StoredEvent:
    mac = snapshot_mac(key, stored.originator_id, stored.originator_version, position, stored.topic, stored.state)
    return StoredEvent(originator_id=stored.originator_id, originator_version=stored.originator_version,
                       topic=stored.topic, state=SEAL_MAGIC + position.to_bytes(8, "big") + mac + stored.state)


def open_snapshot(key: bytes | None, record: StoredEvent) -> tuple[StoredEvent, int]:
    """The library's record inside a seal and the position it is bound to; raises SnapshotRefused."""
    state = bytes(record.state)
    if key is None:
        raise SnapshotRefused("no platform key to check the seal with")
    if not state.startswith(SEAL_MAGIC) or len(state) < SEAL_BYTES:
        raise SnapshotRefused("not sealed")
    position = int.from_bytes(state[len(SEAL_MAGIC):len(SEAL_MAGIC) + 8], "big")
    mac, inner = state[len(SEAL_MAGIC) + 8:SEAL_BYTES], state[SEAL_BYTES:]
    expected = snapshot_mac(key, record.originator_id, record.originator_version, position, record.topic, inner)
    if not hmac.compare_digest(mac, expected):
        raise SnapshotRefused("seal does not verify (edited, or moved to another aggregate, version or position)")
    return StoredEvent(originator_id=record.originator_id, originator_version=record.originator_version,
                       topic=record.topic, state=inner), position


def positions_of(recorder: Any, keys: Sequence[tuple[UUID, int]]) -> dict[tuple[UUID, int], int]:
    """Log positions (notification ids) of the events ``(aggregate id, version)``."""
    found: dict[tuple[UUID, int], int] = {}
    for originator_id, version in keys:
        if isinstance(recorder, SQLiteAggregateRecorder):
            sql = f"SELECT rowid AS position FROM {recorder.events_table_name} WHERE originator_id = ? AND originator_version = ?"  # noqa: S608 - the library's table name
            params: tuple[Any, ...] = (originator_id.hex if isinstance(originator_id, UUID) else originator_id, version)
            rows = _sqlite_rows(recorder, sql, params)
        else:
            statement = SQL("SELECT notification_id AS position FROM {}.{} WHERE originator_id = %s"
                            " AND originator_version = %s").format(Identifier(recorder.datastore.schema),
                                                                   Identifier(recorder.events_table_name))
            rows = _pg_rows(recorder, statement, (originator_id, version))
        if rows:
            found[(originator_id, version)] = int(rows[0]["position"])
    return found


def snapshot_records(snapshot_recorder: Any) -> list[StoredEvent]:
    """Every stored snapshot record, sealed as stored (``aimarket audit verify`` opens each)."""
    if isinstance(snapshot_recorder, SQLiteAggregateRecorder):
        rows = _sqlite_rows(snapshot_recorder, "SELECT originator_id, originator_version, topic, state FROM "  # noqa: S608 - the library's table name
                            f"{snapshot_recorder.events_table_name} ORDER BY originator_id, originator_version", ())
        convert = snapshot_recorder.convert_originator_id
    else:
        statement = SQL("SELECT originator_id, originator_version, topic, state FROM {}.{} ORDER BY originator_id,"
                        " originator_version").format(Identifier(snapshot_recorder.datastore.schema),
                                                      Identifier(snapshot_recorder.events_table_name))
        rows, convert = _pg_rows(snapshot_recorder, statement, ()), (lambda x: x)
    return [StoredEvent(originator_id=convert(r["originator_id"]), originator_version=r["originator_version"],
                        topic=r["topic"], state=bytes(r["state"])) for r in rows]


def _sqlite_rows(recorder: Any, sql: str, params: tuple[Any, ...]) -> list[Any]:
    with recorder.datastore.transaction(commit=False) as c:
        c.execute(sql, params)
        return list(c.fetchall())


def _pg_rows(recorder: Any, statement: Any, params: tuple[Any, ...]) -> list[Any]:
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(statement, params)
        return list(curs.fetchall())
