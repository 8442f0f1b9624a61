"""``aimarket audit replay``: every projection rebuilt from position 0 into a scratch store
and compared with the live read models, table by table (docs/audit.md, "Replay").

1. One snapshot of the live read-model store (``ops.replay_store.Snapshot``) gives each
   live projection's tracking position and, later, its rows: both as of the same instant.
2. Each projection is rebuilt in a scratch store (a fresh PostgreSQL schema on the same
   database, or a fresh SQLite file) from position 0 up to exactly that position, so a live
   hub that moves on meanwhile produces no false difference.
3. Each of its tables is compared with the live one (``ops.replay_compare``): a checksum
   first, the differing rows by primary key only where the checksums differ.

The audit tree is rebuilt the way it always is: its stored leaves and tile hashes (the
tree's memory of the log, never recomputed in place) are copied from the snapshot and the
replay re-verifies every event against them, refusing at the first position the log no
longer matches (``tree_inconsistent``), exactly as an in-place rebuild does.

``--in-place`` keeps the old behaviour, which is what repairs a read model: each live
projection dropped and rebuilt from position 0 where it stands. ``--file`` replays an export
of ``aimarket audit export`` instead of the event store.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from domain.model.errors import MarketError
from ops.replay_compare import EXCLUDED_TABLES, TableResult, compare_table
from ops.replay_store import FileLog, NoLock, ScratchStore, Snapshot, _ident, live_snapshot
from projections.base import Projection
from projections.registry import all_projections
from projections.runner import ProjectionRunner

#: Projections a projection reads while it is rebuilt, replayed with it (their tables are
#: compared only when they are asked for too).
REPLAY_WITH: dict[str, tuple[str, ...]] = {
    "search": ("trust",),  # a newly indexed listing takes its device's score from trust_scores
}
#: Tables copied from the live snapshot before the replay, which then re-verifies them.
SEEDED: dict[str, tuple[tuple[str, str], ...]] = {
    "audit_tree": (("audit_tree_leaves", "leaf_index < ?"), ("audit_tree_nodes", "1 = 1")),
}
REBUILD_BATCH = 10_000  # events per transaction while a scratch store is filled
_TABLE_RE = re.compile(r"CREATE\s+(?:VIRTUAL\s+)?TABLE\s+IF\s+NOT\s+EXISTS\s+([a-z_][a-z0-9_]*)", re.IGNORECASE)

Out = Callable[[str], None]


def projection_tables(projection: Projection, dialect: str, declared_elsewhere: set[str]) -> list[str]:
    """The tables a projection owns: those it declares, and those its DDL creates that no
    other projection declares (the audit tree declares only its cursor, the one table its
    in-place rebuild drops)."""
    created = [t for t in _TABLE_RE.findall(" ".join(projection.ddl(dialect))) if t not in declared_elsewhere]
    return [t for t in dict.fromkeys([*projection.tables, *created]) if t not in EXCLUDED_TABLES]


def select(only: str | None) -> tuple[list[Projection], list[Projection]]:
    """(the projections to compare, the projections to replay), in the registry's order."""
    every = all_projections()
    if only is None:
        return every, every
    wanted = {only, *REPLAY_WITH.get(only, ())}
    return [p for p in every if p.name == only], [p for p in every if p.name in wanted]


def rebuild_in_place(runtime: Any, only: str | None, out: Out = print) -> int:
    """The live projections dropped and rebuilt from 0 (what repairs a read model). The audit
    tree re-verifies its stored leaves instead: on an edited log it refuses at the first
    edited position (reported, exit 1) and the other projections are still rebuilt."""
    refused = False
    for runner in runtime.runners():
        if only and runner.projection.name != only:
            continue
        try:
            out(f"{runner.projection.name}: rebuilt from 0, {runner.rebuild()} events")
        except MarketError as exc:
            refused = True
            out(f"{runner.projection.name}: refused [{exc.code}]: {exc.detail}")
    return 1 if refused else 0


#: How a scratch runner writes (each a lever the replay bench measures against its baseline):
#: INSERTs sent in runs (``projections.coalesce``), the projections' batch buffers
#: (``Projection.buffered``), commits that do not wait for the WAL, large transactions.
SCRATCH_WRITES: dict[str, Any] = {"coalesce_writes": True, "buffer_writes": True, "durable": False,
                                  "batch_size": REBUILD_BATCH}


def scratch_runner(projection: Projection, *, recorder: Any, mapper: Any, views: Any, **overrides: Any
                   ) -> ProjectionRunner:
    """A runner that rebuilds ``projection`` into a scratch store (``overrides``: a baseline)."""
    return ProjectionRunner(projection, recorder=recorder, mapper=mapper, views=views, lock=NoLock(),
                            **{**SCRATCH_WRITES, **overrides})


def replay(runtime: Any, *, only: str | None = None, keep: bool = False, file: str | None = None,
           out: Out = print, note: Out = print, coalesce: bool = True) -> int:
    """Replay into a scratch store and compare with the live one; 0 only when all is equal.
    ``coalesce``: the scratch writes of ``SCRATCH_WRITES`` (off: a live runner's, one by one)."""
    compared, replayed = select(only)
    log = FileLog(file) if file else None
    live = live_snapshot(runtime.settings)
    scratch = ScratchStore(runtime.settings)
    try:
        positions = live.tracking()
        stops, skipped = _stops(runtime, log, replayed, positions)
        plain = {} if coalesce else {"coalesce_writes": False, "buffer_writes": False, "durable": True}
        runners = [scratch_runner(p, recorder=log or runtime.market.recorder, mapper=runtime.market.mapper,
                                  views=scratch.views, **plain) for p in replayed]
        for runner in runners:
            runner.setup()
        _seed(live, scratch, [p.name for p in replayed], positions)
        refused = rebuild_all(runners, stops, note, parallel=False)
        ok = not refused and not skipped
        for name, reason in {**skipped, **refused}.items():
            out(f"{name}: {reason}")
        results = _compare(live, scratch, [p for p in compared if p.name not in refused and p.name not in skipped])
        for result in results:
            ok = ok and result.equal
            for line in result.lines():
                out(line)
    finally:
        live.close()
        if keep:
            scratch.close()
            note(f"scratch store kept: {scratch.where}")
        else:
            scratch.drop()
    return 0 if ok else 1


def _stops(runtime: Any, log: FileLog | None, replayed: list[Projection], positions: dict[str, int]
           ) -> tuple[dict[str, int], dict[str, str]]:
    """Where each replay stops: the live projection's position. An export that ends before
    it can only be compared when no event of the projection lies between the two."""
    stops, skipped = {p.name: positions.get(p.name, 0) for p in replayed}, {}
    if log is None:
        return stops, skipped
    end = log.max_notification_id()
    for p in replayed:
        live_at = stops[p.name]
        if live_at <= end:
            continue
        later = runtime.market.recorder.select_notifications(start=end, limit=1, stop=live_at, topics=p.topics,
                                                             inclusive_of_start=False)
        if later:
            skipped[p.name] = (f"not compared: the live projection is at position {live_at}, past the export's last "
                               f"position {end} (sign a head and export again)")
        stops[p.name] = end
    return stops, skipped


def _seed(live: Snapshot, scratch: ScratchStore, names: list[str], positions: dict[str, int]) -> None:
    """Copy the audit tree's memory (its leaves up to the live tree size, its tile hashes)."""
    live_tables = live.tables()
    for name in names:
        for table, where in SEEDED.get(name, ()):
            if table not in live_tables or name not in positions:
                continue
            size_row = live.fetchall("SELECT tree_size FROM audit_tree_cursor WHERE id = 1")
            size = int(size_row[0]["tree_size"]) if size_row else 0
            columns = live.columns(table)
            sql = f"SELECT {', '.join(map(_ident, columns))} FROM {_ident(table)} WHERE {where}"  # noqa: S608
            insert = (f"INSERT INTO {_ident(table)} ({', '.join(map(_ident, columns))})"  # noqa: S608
                      f" VALUES ({', '.join('?' * len(columns))})")
            batch: list[tuple[Any, ...]] = []
            for row in live.stream(sql, (size,) if "?" in where else ()):
                batch.append(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row.values()))
                if len(batch) >= REBUILD_BATCH:
                    _insert(scratch, insert, batch)
                    batch = []
            _insert(scratch, insert, batch)


def _insert(scratch: ScratchStore, sql: str, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        with scratch.views.transaction() as tx:
            tx.executemany(sql, rows)


#: Runners that share tables (search reads trust_scores, trust writes search_listings) stay in
#: one thread when runners run in threads (``parallel``, the bench's ``--parallel``; on the
#: busy two-core machine measured it was slower than one after the other, so replay runs them
#: in turn).
SEQUENTIAL_GROUPS: tuple[tuple[str, ...], ...] = (("search", "trust"),)


def rebuild_all(runners: list[ProjectionRunner], stops: dict[str, int], note: Out, *, parallel: bool,
                shared_read: bool = True) -> dict[str, str]:
    """Catch every runner up to its stop; the refusals by projection name. ``shared_read``:
    the log is read (and each event decoded) once for all of them (:func:`_run_shared`);
    otherwise each runner reads it on its own (``ProjectionRunner.catch_up``)."""
    groups = _groups(runners)
    if shared_read:
        return _run_shared(runners, groups, stops, note, parallel=parallel)
    refused: dict[str, str] = {}
    if not parallel:
        for group in groups:
            refused.update(_run(group, stops, note))
        return refused
    with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="replay") as pool:
        for outcome in pool.map(lambda g: _run(g, stops, note), groups):
            refused.update(outcome)
    return refused


def _groups(runners: list[ProjectionRunner]) -> list[list[ProjectionRunner]]:
    groups: list[list[ProjectionRunner]] = []
    for runner in runners:
        together = next((g for g in SEQUENTIAL_GROUPS if runner.projection.name in g), None)
        group = next((g for g in groups if together and g[0].projection.name in together), None)
        if group is None:
            groups.append([runner])
        else:
            group.append(runner)
    return groups


def _run_shared(runners: list[ProjectionRunner], groups: list[list[ProjectionRunner]], stops: dict[str, int],
                note: Out, *, parallel: bool) -> dict[str, str]:
    """One read of the log for every runner: each batch (every topic) is read and decoded once,
    then each runner applies its events of it up to its stop, in its own transaction
    (``ProjectionRunner.apply_read``); ``parallel``: the groups of a batch in threads."""
    if not runners:
        return {}
    recorder, mapper, batch_size = runners[0].recorder, runners[0].mapper, runners[0].batch_size
    head = recorder.max_notification_id() or 0
    ends = {r.projection.name: head if stops.get(r.projection.name) is None else min(head, stops[r.projection.name])
            for r in runners}
    refused: dict[str, str] = {}
    events = dict.fromkeys(ends, 0)
    seconds = dict.fromkeys(ends, 0.0)

    def apply(group: list[ProjectionRunner], batch: list[Any], upto: int, decode: Callable[[Any], Any]) -> None:
        for runner in group:
            name, started = runner.projection.name, time.perf_counter()
            if name in refused:
                continue
            try:
                events[name] += runner.apply_read(batch, min(upto, ends[name]), decode)
            except MarketError as exc:
                refused[name] = f"refused [{exc.code}]: {exc.detail}"
            seconds[name] += time.perf_counter() - started

    position, top = min(r.position() for r in runners), max(ends.values())
    with ThreadPoolExecutor(max_workers=max(1, len(groups)) if parallel else 1, thread_name_prefix="replay") as pool:
        while position < top:
            batch = recorder.select_notifications(start=position, limit=batch_size, stop=top, inclusive_of_start=False)
            upto = batch[-1].id if len(batch) == batch_size else top
            decoded: dict[int, Any] = {}

            def decode(notification: Any, decoded: dict[int, Any] = decoded) -> Any:
                event = decoded.get(notification.id)
                if event is None:
                    event = decoded[notification.id] = mapper.to_domain_event(notification)
                return event

            if parallel:
                list(pool.map(lambda g, b=batch, u=upto, d=decode: apply(g, b, u, d), groups))
            else:
                for group in groups:
                    apply(group, batch, upto, decode)
            position = upto
    for runner in runners:
        name = runner.projection.name
        if name not in refused:
            note(f"{name}: replayed {events[name]} events to position {stops.get(name)} in {seconds[name]:.1f} s")
    return refused


def _run(runners: list[ProjectionRunner], stops: dict[str, int], note: Out) -> dict[str, str]:
    refused: dict[str, str] = {}
    for runner in runners:
        name, started = runner.projection.name, time.perf_counter()
        try:
            events = runner.catch_up(stop=stops.get(name))
        except MarketError as exc:
            refused[name] = f"refused [{exc.code}]: {exc.detail}"
            continue
        note(f"{name}: replayed {events} events to position {stops.get(name)} in {time.perf_counter() - started:.1f} s")
    return refused


def _compare(live: Snapshot, scratch: ScratchStore, projections: list[Projection]) -> list[TableResult]:
    mine = scratch.snapshot()
    try:
        declared = {t: p.name for p in all_projections() for t in p.tables}
        results = []
        for p in projections:
            others = {t for t, owner in declared.items() if owner != p.name}
            results += [compare_table(live, mine, t) for t in projection_tables(p, mine.dialect, others)
                        if t in mine.tables()]
        return results
    finally:
        mine.close()
