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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from domain.model.base import MarketAggregate

LIBRARY_VERSION = "9.5.6"


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


class ArrayInsertRecorder(PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.insert_arrays_statement = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::{id_type}[], %s::bigint[], %s::text[], %s::bytea[]) "
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
