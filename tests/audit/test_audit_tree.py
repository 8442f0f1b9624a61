"""The audit-tree projection and the signed heads, on the embedded SQLite store and on PostgreSQL:
a leaf for every event in log order, tiles, heads every N events or T seconds with strictly
increasing timestamps, rotation honoured, proofs a third party verifies, rebuilds that
re-verify instead of rebuilding."""

from __future__ import annotations

import itertools
import uuid

import pytest
from freezegun import freeze_time

from domain.app.audit_trail import HeadPolicy, run_head_signer
from domain.model.audit_entry import (
    ExportChecker,
    check_consistency_bundle,
    check_inclusion_bundle,
    entry_leaf_hash,
    entry_of,
)
from domain.model.base import Meta
from domain.model.errors import ProofInvalid, TreeHeadInvalid, TreeHeadNotFound, TreeInconsistent
from domain.model.index import Index
from domain.model.merkle import MemoryTree
from projections.audit_tree import TreeStore
from tests.audit.tamper import Tamper
from tests.audit.world import META, build
from tests.helpers import wait_until


def log_leaves(runtime) -> list[bytes]:
    return [entry_leaf_hash(entry_of(n.id, n.originator_id, n.originator_version, n.topic, n.state))
            for n in runtime.market.recorder.select_notifications(start=0, limit=100_000, inclusive_of_start=False)]


def add_indexes(runtime, count: int) -> None:
    runtime.market.save(*[Index(id=uuid.uuid4(), meta=META, kind="test", target_id=f"n{i}") for i in range(count)])


def test_a_leaf_per_event_in_log_order_and_the_root_of_the_log(runtime) -> None:
    world = build(runtime)
    leaves = log_leaves(runtime)
    with world.trail.store.view() as tree:
        assert tree.size() == len(leaves) == len(world.positions)
        assert tree.root(len(leaves)) == MemoryTree(leaves).root()
        stored = [r["position"] for r in tree.leaves(after_position=0, limit=1000)]
    assert stored == world.positions
    head = world.trail.latest_head()
    assert head.head.tree_size == len(leaves) and head.head.root_hash == MemoryTree(leaves).root()


def test_tiles_of_256_and_proofs_across_them(runtime) -> None:
    world = build(runtime)
    add_indexes(runtime, 600)  # one transaction: fast on both stores
    world.catch_up()
    leaves = log_leaves(runtime)
    memory = MemoryTree(leaves)
    with world.trail.store.view() as tree:
        nodes = tree.tx.fetchall("SELECT level, node_index FROM audit_tree_nodes ORDER BY node_index")
        assert [(r["level"], r["node_index"]) for r in nodes] == [(8, 0), (8, 1)]
        for size in (1, 255, 256, 257, 511, 512, len(leaves)):
            assert tree.root(size) == memory.root(size)
        for index in (0, 255, 256, 300, len(leaves) - 1):
            assert tree.inclusion_proof(index, len(leaves)) == memory.inclusion_proof(index)
        assert tree.consistency_proof(257, len(leaves)) == memory.consistency_proof(257)


def test_heads_every_n_events_or_t_seconds_timestamps_strictly_increasing(runtime) -> None:
    with freeze_time("2027-01-01 00:00:00") as clock:
        world = build(runtime, policy=HeadPolicy(every_events=5, every_s=30))
        first = world.trail.latest_head()
        assert world.trail.sign_head() is None  # nothing new
        add_indexes(runtime, 4)
        world.catch_up()
        assert world.trail.sign_head() is None  # 4 < 5 new entries, 0 s
        clock.tick(30)
        second = world.trail.sign_head()  # T seconds passed
        assert second is not None and second.head.tree_size == first.head.tree_size + 4
        add_indexes(runtime, 5)
        world.catch_up()
        third = world.trail.sign_head()  # N new entries, and the clock has not moved
        assert third is not None and third.head.timestamp_ms == second.head.timestamp_ms + 1
    heads = world.trail.heads()
    assert [h.head.tree_size for h in heads] == [first.head.tree_size, second.head.tree_size, third.head.tree_size]
    stamps = [h.head.timestamp_ms for h in heads]
    assert stamps == sorted(set(stamps))
    keys = list(world.trail.signing_keys().values())
    for a, b in itertools.pairwise(heads):
        check_consistency_bundle(world.trail.consistency(a.head.tree_size, b.head.tree_size), keys)


def test_inclusion_proofs_verify_offline_and_a_changed_entry_fails(runtime) -> None:
    world = build(runtime)
    keys = [world.trail.public_key("signing-1")]
    position = world.positions[3]
    bundle = world.trail.proof(position)
    entry, head = check_inclusion_bundle(bundle, keys)
    assert entry["position"] == position and head.tree_size == len(world.positions)
    edited = {**bundle, "entry": {**bundle["entry"], "state": bundle["entry"]["state"].replace("1", "9", 1)}}
    with pytest.raises(ProofInvalid):
        check_inclusion_bundle(edited, keys)
    with pytest.raises(TreeHeadInvalid):
        check_inclusion_bundle(bundle, [world.trail.public_key("signing-7")])  # not the hub's key
    Tamper(runtime).replace_in_state(position, b'"amount_minor":1', b'"amount_minor":9')
    with pytest.raises(ProofInvalid):  # the hub serves the entry as stored now: its proof fails
        check_inclusion_bundle(world.trail.proof(position), keys)


def test_an_accounts_own_entries_each_with_a_proof(runtime) -> None:
    world = build(runtime)
    add_indexes(runtime, 2)  # after the head: listed, without a proof yet
    world.catch_up()
    page = world.trail.entries(actors=["account:buyer-1"], originator_id=None, after_position=0, limit=100)
    keys = list(world.trail.signing_keys().values())
    proved = [i for i in page["items"] if i["proof"] is not None]
    pending = [i for i in page["items"] if i["proof"] is None]
    assert len(pending) == 2 and proved
    for item in proved:
        entry, _head = check_inclusion_bundle(item, keys)
        assert '"actor":"account:buyer-1"' in entry["state"]
    everything = world.trail.entries(actors=None, originator_id=None, after_position=0, limit=100)
    assert len(everything["items"]) > len(page["items"])


def test_rotation_new_heads_use_the_new_key_old_heads_stay_valid(runtime) -> None:
    world = build(runtime)
    first = world.trail.latest_head()
    kid = runtime.market.rotate_platform_key(Meta.system("test").as_dict(), "signing")
    assert kid == "signing-2"
    world.catch_up()
    second = world.trail.sign_head(force=True)
    assert first.kid == "signing-1" and second is not None and second.kid == "signing-2"
    old, new = world.trail.public_key("signing-1"), world.trail.public_key("signing-2")
    check_consistency_bundle(world.trail.consistency(first.head.tree_size, second.head.tree_size), [old, new])
    with pytest.raises(TreeHeadInvalid):
        check_consistency_bundle(world.trail.consistency(first.head.tree_size, second.head.tree_size), [old])
    lines: list[dict] = []
    world.trail.export(lines.append)
    checker = ExportChecker([old, new])
    for line in lines:
        checker.feed(line)
    assert checker.finish()["ok"], checker.problems
    assert set(lines[0]["keys"]) == {"signing-1", "signing-2"}


def test_a_rebuild_re_verifies_the_stored_leaves_and_stops_at_an_edit(runtime) -> None:
    world = build(runtime)
    assert world.runner.rebuild() == len(world.positions)  # the same log: every stored leaf matches
    position = world.positions[5]
    Tamper(runtime).replace_in_state(position, b'"amount_minor":1', b'"amount_minor":2')
    with pytest.raises(TreeInconsistent, match=f"position {position}"):
        world.runner.rebuild()
    with world.trail.store.view() as tree:
        assert tree.size() < len(world.positions) and tree.leaf_count() == len(world.positions)
    add_indexes(runtime, 3)
    assert world.trail.sign_head(force=True) is None  # never a head over an edited log


def test_no_head_is_signed_when_the_stored_tree_disagrees_with_the_last_head(runtime) -> None:
    world = build(runtime)
    add_indexes(runtime, 3)
    world.catch_up()
    with world.trail.store.view() as tree:  # an attacker rewrites a stored leaf hash
        tree.tx.execute("UPDATE audit_tree_leaves SET leaf_hash = ? WHERE leaf_index = 2", (b"\x00" * 32,))
    with pytest.raises(TreeInconsistent):
        world.trail.sign_head(force=True)


def test_the_head_signer_thread_signs_when_due(runtime) -> None:
    import threading

    world = build(runtime, policy=HeadPolicy(every_events=2, every_s=3600))
    add_indexes(runtime, 2)
    world.catch_up()
    stop = threading.Event()
    thread = threading.Thread(target=run_head_signer, args=(world.trail, stop, 0.05), daemon=True)
    thread.start()
    try:
        wait_until(lambda: world.trail.latest_head().head.tree_size == len(world.positions) + 2, 10,
                   what="a head over the two new entries")
    finally:
        stop.set()
        thread.join(5)


def test_no_head_before_any_event_and_errors_name_missing_heads(runtime) -> None:
    trail = build(runtime).trail
    with pytest.raises(TreeHeadNotFound):
        trail.consistency(1, 999)
    empty = type(trail)(runtime.market, TreeStore(runtime.views))
    assert empty.latest_head().head.tree_size > 0  # the same store: heads are shared by every host
