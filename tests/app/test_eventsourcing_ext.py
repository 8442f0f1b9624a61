"""The one module that overrides eventsourcing internals names the version it was written for."""

from __future__ import annotations

from importlib.metadata import version

from eventsourcing.application import Application
from eventsourcing.postgres import PostgresApplicationRecorder

from domain.app import eventsourcing_ext


def test_overrides_were_written_for_the_installed_library() -> None:
    # Upgrading the library? Re-read each override in domain/app/eventsourcing_ext.py against
    # the new version's Application.save / _take_snapshots / PostgresApplicationRecorder,
    # then bump LIBRARY_VERSION (and the pin in pyproject.toml).
    assert version("eventsourcing") == eventsourcing_ext.LIBRARY_VERSION


def test_the_internals_overridden_still_exist() -> None:
    for name in ("_record", "_take_snapshots", "_notify", "snapshotting_intervals"):
        assert hasattr(Application, name), name
    for name in ("_insert_stored_events", "_lock_table", "_notify_channel"):
        assert hasattr(PostgresApplicationRecorder, name), name


def test_the_snapshot_store_internals_sealed_snapshots_rely_on_still_exist() -> None:
    from eventsourcing.persistence import EventStore
    from eventsourcing.sqlite import SQLiteAggregateRecorder

    assert hasattr(Application, "construct_snapshot_store")
    for name in ("put", "get", "mapper", "recorder"):
        assert hasattr(EventStore, name) or name in EventStore.__init__.__code__.co_varnames, name
    assert hasattr(SQLiteAggregateRecorder, "convert_originator_id")
