"""Tamper tests against real PostgreSQL (issue 13, Done when): every edit class of the log is
detected by ``aimarket audit verify`` with the first edited position named, and still after
``aimarket audit replay`` rebuilt every read model; an inclusion proof for a changed entry fails."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from domain.model.audit_entry import check_inclusion_bundle, entry_leaf_hash, entry_of
from domain.model.errors import NotFound, ProofInvalid
from domain.model.keys import SigningKey
from domain.model.merkle import CompactRange
from domain.model.tree_head import TreeHead, sign_head
from ops.audit import verify_log
from ops.bootstrap import build_runtime
from ops.cli import main
from tests.audit.tamper import Tamper
from tests.audit.world import World, build


@pytest.fixture
def pg_runtime(make_settings):
    rt = build_runtime(make_settings("postgres"))
    yield rt
    rt.close()


def at(world: World, index: int) -> int:
    return world.positions[index]


def edit_byte(world: World, t: Tamper) -> int:
    position = at(world, 14)  # an index entry: its target id "x0" becomes "y0"
    t.replace_in_state(position, b'"target_id":"x', b'"target_id":"y')
    return position


def edit_amount(world: World, t: Tamper) -> int:
    position = at(world, 3)  # a debit of 11 becomes 91
    t.replace_in_state(position, b'"amount_minor":11', b'"amount_minor":91')
    return position


def edit_id(world: World, t: Tamper) -> int:
    position = at(world, 15)
    t.set_originator(position, uuid.uuid4())
    return position


def edit_timestamp(world: World, t: Tamper) -> int:
    position = at(world, 6)
    state = t.row(position)[3]
    stamp = re.search(rb'"_data_":"(\d{4})-', state)
    assert stamp
    t.set_state(position, state.replace(stamp.group(0), b'"_data_":"%d-' % (int(stamp.group(1)) - 1), 1))
    return position


def delete_debit(world: World, t: Tamper) -> int:
    position = at(world, 4)
    t.delete(position)
    return position


def swap_two(world: World, t: Tamper) -> int:
    t.swap(at(world, 7), at(world, 16))
    return at(world, 7)


def insert_one(world: World, t: Tamper) -> int:
    assert world.hole is not None  # the lost race left a position unused
    template = t.row(at(world, 14))
    t.insert(world.hole, uuid.uuid4(), 1, template[2], template[3])
    return world.hole


def rewrite_suffix(world: World, t: Tamper) -> int:
    first = at(world, 12)
    for position in world.positions[12:]:
        _oid, _version, _topic, state = t.row(position)
        t.set_state(position, state.replace(b'"correlation_id":"req-', b'"correlation_id":"forged-', 1))
    return first


def edit_title(world: World, t: Tamper) -> int:
    position = world.of("Listing.Updated")
    t.replace_in_state(position, b"(v2)", b"(v3)")
    return position


def edit_actor(world: World, t: Tamper) -> int:
    position = at(world, 5)  # a debit said to be the buyer's becomes someone else's
    t.replace_in_state(position, b'"actor":"account:buyer-1"', b'"actor":"account:buyer-9"')
    return position


def delete_listing_update(world: World, t: Tamper) -> int:
    position = world.of("Listing.Updated")
    t.delete(position)
    return position


def delete_enrolment(world: World, t: Tamper) -> int:
    position = world.of("Device.Enrolled")
    t.delete(position)
    return position


def swap_in_channel(world: World, t: Tamper) -> int:
    t.swap(at(world, 3), at(world, 8))  # debits of 11 and 12 of one channel
    return at(world, 3)


def swap_across_channels(world: World, t: Tamper) -> int:
    other = world.of("Channel.Debited", 0, world.second_channel_id)
    t.swap(at(world, 10), other)
    return at(world, 10)


def swap_listings(world: World, t: Tamper) -> int:
    first, second = world.of("Listing.Published", 0), world.of("Listing.Published", 1)
    t.swap(first, second)
    return first


def swap_equal_debits(world: World, t: Tamper) -> int:
    t.swap(at(world, 2), at(world, 6))  # two debits of 10 of one channel
    return at(world, 2)


EDITS: dict[str, Callable[[World, Tamper], int]] = {
    "byte": edit_byte, "amount": edit_amount, "id": edit_id, "title": edit_title, "actor": edit_actor,
    "timestamp": edit_timestamp, "delete": delete_debit, "delete-listing-update": delete_listing_update,
    "delete-enrolment": delete_enrolment, "swap": swap_two, "swap-in-channel": swap_in_channel,
    "swap-across-channels": swap_across_channels, "swap-listings": swap_listings,
    "swap-equal-debits": swap_equal_debits, "insert": insert_one, "suffix": rewrite_suffix,
}
SIGNATURE_EVIDENCE = {  # edits that the signatures alone also catch (no tree needed): what is named where
    "title": ("Listing.Updated", "listing signature"),
    "delete-enrolment": ("Listing.Published", "no enrolled device holds"),
}


def named(report: dict[str, Any], position: int) -> bool:
    return report["tree"]["first_difference"] is not None and report["tree"]["first_difference"].startswith(
        f"position {position}:")


def replay(runtime: Any) -> list[str]:
    """What ``aimarket audit replay`` does: every projection rebuilt from position 0; the names of
    those that refused (the audit tree on an edited log; a read model that cannot apply it)."""
    refused = []
    for runner in runtime.runners():
        try:
            runner.rebuild()
        except Exception:
            refused.append(runner.projection.name)
    return refused


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_every_edit_is_detected_with_its_position_also_after_replay(pg_runtime, edit: str) -> None:
    world = build(pg_runtime, hole=True, rich=True)
    for runner in pg_runtime.runners():
        runner.catch_up()
    clean = verify_log(pg_runtime.market, pg_runtime.views)
    assert clean["ok"], clean["problems"]
    assert clean["tree"]["signed_heads"] == 1 and clean["tree"]["unsigned_entries"] == 0
    position = EDITS[edit](world, Tamper(pg_runtime))

    report = verify_log(pg_runtime.market, pg_runtime.views)
    assert not report["ok"] and named(report, position), report["tree"]
    assert any(f"position {position}" in p for p in report["problems"][:3]), report["problems"]
    head_problems = [p for p in report["problems"] if "signed tree head of size" in p]
    assert head_problems and ("no longer gives its root" in head_problems[0] or "holds only" in head_problems[0])
    pooled = verify_log(pg_runtime.market, pg_runtime.views, workers=2, pool_after_jobs=0)  # the same answer
    assert pooled["signatures"]["pooled"] or not pooled["signatures"]["verified_jobs"]
    assert (pooled["tree"], pooled["problems"]) == (report["tree"], report["problems"])

    replay(pg_runtime)
    after = verify_log(pg_runtime.market, pg_runtime.views)
    assert not after["ok"] and named(after, position), after["tree"]
    assert after["projections"]["audit_tree"]["state"] != "ok" or after["tree"]["verified_leaves"] < len(world.positions)
    if edit in SIGNATURE_EVIDENCE:
        topic, what = SIGNATURE_EVIDENCE[edit]
        assert any(f": {topic}: " in p and what in p for p in after["signatures"]["problems"]), after["signatures"]

    keys = list(world.trail.signing_keys().values())
    if edit.startswith("delete"):
        with pytest.raises(NotFound):
            world.trail.proof(position)
    elif edit != "insert":  # an inserted event has no leaf: nothing to prove
        with pytest.raises(ProofInvalid):
            check_inclusion_bundle(world.trail.proof(position), keys)


def test_the_cli_names_the_position_and_exits_non_zero(pg_runtime, monkeypatch, capsys) -> None:
    world = build(pg_runtime)
    s = pg_runtime.settings
    monkeypatch.setenv("AIMARKET_DATABASE_URL", s.database_url)
    monkeypatch.setenv("AIMARKET_DB_SCHEMA", s.db_schema)
    monkeypatch.setenv("AIMARKET_SECRET", s.secret_hex)
    monkeypatch.setenv("AIMARKET_HUB_URL", s.hub_url)
    position = edit_amount(world, Tamper(pg_runtime))
    assert main(["audit", "replay"]) == 1  # the audit tree refuses the edited log; the others rebuilt
    out = capsys.readouterr().out
    assert f"position {position}" in out and "audit_tree: refused" in out
    assert main(["audit", "verify"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["tree"]["first_difference"].startswith(f"position {position}:")


def test_a_suffix_rewritten_with_a_tree_under_another_key_fails_against_the_signed_heads(pg_runtime) -> None:
    """The attacker edits the log from a position on, recomputes the stored leaves so they match,
    and re-signs the head with a key of their own under the platform's key id."""
    world = build(pg_runtime, rich=True)
    t = Tamper(pg_runtime)
    first = rewrite_suffix(world, t)
    leaves = CompactRange()
    for leaf_index, position in t.leaves():
        oid, version, topic, state = t.row(position)
        leaf = entry_leaf_hash(entry_of(position, oid, version, topic, state))
        t.set_leaf(leaf_index, leaf)
        leaves.append(leaf)
    head = world.trail.heads(after_size=-1, limit=10)[-1].head
    forged = sign_head(TreeHead(head.origin, leaves.size, leaves.root(), head.timestamp_ms), SigningKey.generate(),
                       "signing-1")
    t.set_head(leaves.size, leaves.root(), forged.note)

    for rebuilt in (False, True):
        if rebuilt:
            replay(pg_runtime)
        report = verify_log(pg_runtime.market, pg_runtime.views)
        assert not report["ok"]
        assert report["tree"]["first_difference"] is None  # the forged tree matches the forged log...
        heads = [p for p in report["problems"] if f"signed tree head of size {leaves.size}" in p]
        assert heads and "signing-1" in heads[0], report["problems"]  # ...but not the hub's key
    assert first > 0
