"""``aimarket audit replay`` on both stores (issue 13, Done when): after a realistic mixed
workload every projection rebuilt in a scratch store equals the live one; an altered
projection row (a balance, a search title, a trust score) is named with its table and row,
a deleted one is named missing; the scratch schema is gone afterwards."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from freezegun import freeze_time

from domain.model.channel import KEY_RETENTION_S, Channel
from domain.model.device import Device
from domain.model.listing import Listing
from domain.model.payout import PayoutDestination, SellerPayouts
from domain.model.purchase import Purchase
from domain.model.traces import Signal, Trace
from ops.audit_replay import replay
from ops.bootstrap import build_runtime
from ops.cli import main
from tests.conftest import pg_conninfo

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


def meta(actor: str = "account:a") -> dict[str, str]:
    return {"actor": actor, "correlation_id": f"req-{uuid.uuid4().hex[:6]}", "causation_id": ""}


def workload(runtime: Any) -> dict[str, Any]:
    """Accounts, devices (one rotated), listings (one updated, one delisted), channels with
    debits, purchases with redemptions, receipts, confirmations and outcomes, heartbeats,
    a behaviour signal, payout destinations and payouts, spread over two hours of event time."""
    market, ids = runtime.market, {}
    clock = T0
    with freeze_time(clock) as frozen:
        def later(minutes: float = 1.0) -> None:
            frozen.tick(timedelta(minutes=minutes))

        market.keyring()
        for name in ("seller-1", "seller-2", "buyer-1", "buyer-2"):
            ids[name] = market.identity.register(meta(), f"{name}@example.com", "a long passphrase", ["seller", "buyer"]
                                                 )["id"]
        devices = []
        for seller in ("seller-1", "seller-2"):
            device = Device(id=uuid.uuid4(), meta=meta(), account_id=ids[seller], name=f"{seller} node", public_key="pk",
                            kid="k1", kx_public_key="kx", endpoint="https://node.example")
            market.save(device)
            devices.append(device)
        ids["device"] = str(devices[0].id)
        listings = []
        for i, device in enumerate(devices * 2):
            later(0.5)
            listing = Listing(id=uuid.uuid4(), meta=meta(), account_id=device.account_id, device_id=str(device.id),
                              listing_key=f"key-{i}", metadata={"title": f"hospital admissions {i}", "kind": "dataset",
                              "category": "health", "licence": "CC-BY-4.0", "tags": ["hospital", f"t{i}"],
                              "description": "admissions by ward", "columns": [{"name": "ward"}]},
                              price_minor=1000 + i, currency="USD", proof={})
            market.save(listing)
            listings.append(listing)
        ids["listing"] = str(listings[0].id)
        listings[1].update(meta(), account_id=listings[1].account_id, metadata={**listings[1].metadata, "title": "new"},
                           price_minor=1500, currency="USD", proof={})
        listings[2].delist(meta(), account_id=listings[2].account_id, reason="withdrawn", proof={})
        market.save(listings[1], listings[2])
        channels = []
        for buyer in ("buyer-1", "buyer-2"):
            channel = Channel(id=uuid.uuid4(), meta=meta(), buyer_account_id=ids[buyer], currency="USD", rail="card",
                              deposit_minor=50_000, funding_ref="pi_1", expiry_s=int(T0.timestamp()) + 10 * KEY_RETENTION_S,
                              fee_bps=500, unsigned_allowance_minor=0, buyer_wallet="0x" + "ab" * 20,
                              chain_channel_id="", opened_at_s=int(T0.timestamp()))
            market.save(channel)
            channels.append(channel)
        ids["channel"] = str(channels[0].id)
        for round_ in range(6):
            later(7)
            now_s = int((clock + timedelta(minutes=7 * (round_ + 1))).timestamp())
            for c, channel in enumerate(channels):
                device = devices[(round_ + c) % 2]
                channel.debit(meta(), key=f"k{round_}-{c}", request_hash=f"h{round_}{c}", amount_minor=100 + round_,
                              seller_account_id=device.account_id, purpose="", now_s=now_s)
                market.save(channel)
                _purchase(market, device, channel, now_s, round_)
            for seq, device in enumerate(devices):
                market.save(Trace(id=uuid.uuid4(), meta=meta(), device_id=str(device.id), seq=round_ * 2 + seq,
                                  kind="heartbeat", entry_hash=f"h{round_}{seq}", prev_hash="p", created_ms=0,
                                  body_digest="d", sent_ms=0, nonce=f"n{round_}{seq}", kid="k1", envelope={},
                                  effect="none", effect_code=None))
        later(3)
        market.save(Signal.make(uuid.uuid4(), meta(), device_id=str(devices[1].id), kind="refused",
                                code="signature_invalid", at_ms=int(T0.timestamp() * 1000)))
        devices[0]._key_rotated(meta=meta(), public_key="pk2", kid="k2", kx_public_key="kx2", signature="s",
                                previous_kid="k1", previous_valid_until_s=int(T0.timestamp()) + 86_400)
        market.save(devices[0])
        for seller in ("seller-1", "seller-2"):
            destination = PayoutDestination(id=uuid.uuid4(), meta=meta(), account_id=ids[seller], stripe_account="acct_1")
            market.save(destination)
            payouts = SellerPayouts(id=uuid.uuid4(), meta=meta(), seller_account_id=ids[seller], currency="USD")
            payout_id = payouts.request(meta(), earned_minor=300, destination="acct_1")
            assert payout_id is not None
            payouts.mark_sent(meta(), payout_id, "tr_1")
            market.save(destination, payouts)
        later(61)  # a new hour: every subject is scored
        market.save(Trace(id=uuid.uuid4(), meta=meta(), device_id=str(devices[0].id), seq=99, kind="heartbeat",
                          entry_hash="h99", prev_hash="p", created_ms=0, body_digest="d", sent_ms=0, nonce="n99",
                          kid="k1", envelope={}, effect="none", effect_code=None))
    for runner in runtime.runners():
        runner.catch_up()
    return ids


def _purchase(market: Any, device: Device, channel: Channel, now_s: int, round_: int) -> None:
    purchase = Purchase(id=uuid.uuid4(), meta=meta(), buyer_account_id=channel.buyer_account_id,
                        seller_account_id=device.account_id, seller_device_id=str(device.id),
                        listing_id=str(uuid.uuid4()), listing_version=1, channel_id=str(channel.id), price_minor=100,
                        fee_minor=5, currency="USD", idempotency_key=f"k{round_}", request_hash="h", token="t", kid="k",
                        jti=str(uuid.uuid4()), cnf_jkt="j", issued_at_s=now_s, start_by_s=now_s + 60,
                        expires_at_s=now_s + 600)
    purchase._token_redeemed(meta=meta(), jti=purchase.jti, device_id=str(device.id), buyer_jkt="j",
                             redeemed_at_ms=now_s * 1000 + 100)
    if round_ % 3 == 2:  # some never finish
        purchase._token_expired(meta=meta(), reason="transfer_window", at_s=now_s + 700)
    else:
        purchase._receipt_recorded(meta=meta(), digest=f"r{round_}", seq=1, outcome="complete", bytes_sent=10,
                                   intervals=[[0, 10]], sessions=1, first_byte_ms=1, last_byte_ms=2, blocks_acked=1,
                                   confirmation="c")
        purchase._confirmation_recorded(meta=meta(), digest="c", session="s", blocks_verified=1,
                                        received_at_ms=now_s * 1000 + 500)
        purchase._delivered(meta=meta(), receipt="r", confirmation="c", delivered_at_ms=now_s * 1000 + 600)
    market.save(purchase)


def run_replay(runtime: Any, **options: Any) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = replay(runtime, out=lines.append, note=lambda _line: None, **options)
    return code, lines


def scratch_schemas() -> set[str]:
    with psycopg.connect(pg_conninfo()) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'aimarket_replay_%'").fetchall()
    return {r[0] for r in rows}


@pytest.fixture
def world(runtime) -> dict[str, Any]:
    return workload(runtime)


def test_a_replay_of_a_mixed_workload_equals_the_live_read_models(runtime, world, store) -> None:
    before = scratch_schemas() if store == "postgres" else set()
    code, lines = run_replay(runtime)
    assert code == 0, "\n".join(lines)
    assert all(": equal (" in line for line in lines), lines
    tables = {line.split(":")[0] for line in lines}
    assert {"ledger_balances", "ledger_postings", "money_channels", "payouts", "search_listings", "trust_scores",
            "trust_facts", "purchases", "devices", "audit_events", "audit_tree_leaves"} <= tables
    assert "audit_tree_heads" not in tables and not any(line.startswith("audit_tree_cursor: equal (0") for line in lines)
    rows = {line.split(":")[0]: int(line.split("(")[1].split()[0]) for line in lines}
    assert rows["ledger_postings"] > 20 and rows["trust_scores"] >= 4 and rows["purchases"] == 12
    if store == "postgres":
        assert scratch_schemas() == before  # dropped


def test_altered_rows_are_named_with_their_table_and_key(runtime, world) -> None:
    with runtime.views.transaction() as tx:
        tx.execute("UPDATE ledger_balances SET balance_minor = balance_minor + 1 WHERE account = ?",
                   (f"buyer:{world['buyer-1']}:channel:{world['channel']}",))
        tx.execute("UPDATE search_listings SET title = 'forged' WHERE listing_id = ?", (world["listing"],))
        tx.execute("UPDATE trust_scores SET score = 0.99 WHERE subject = ?", (f"device:{world['device']}",))
    code, lines = run_replay(runtime)
    assert code == 1
    text = "\n".join(lines)
    assert "ledger_balances: DIFFERS" in text and "search_listings: DIFFERS" in text and "trust_scores: DIFFERS" in text
    assert f"changed account=buyer:{world['buyer-1']}:channel:{world['channel']}, currency=USD: balance_minor (live" in text
    assert f"changed listing_id={world['listing']}: title (live forged, replay hospital admissions 0)" in text
    assert f"changed subject=device:{world['device']}: score (live 0.99" in text
    assert "ledger_postings: equal" in text and "devices: equal" in text


def test_a_deleted_row_is_named_missing_and_an_added_one_extra(runtime, world) -> None:
    with runtime.views.transaction() as tx:
        tx.execute("DELETE FROM devices WHERE device_id = ?", (world["device"],))
        tx.execute("INSERT INTO payout_owners VALUES ('ghost', 'nobody', 'USD')")
    code, lines = run_replay(runtime, only="devices")
    assert code == 1
    assert lines[0] == "devices: DIFFERS (live 1 rows, replay 2 rows)"
    assert lines[1] == f"  missing device_id={world['device']}: in the replay, not in live"
    code, lines = run_replay(runtime, only="balances")
    assert code == 1 and "  extra aggregate_id=ghost: in live, not in the replay" in lines


def test_search_alone_is_replayed_with_the_scores_it_reads(runtime, world) -> None:
    code, lines = run_replay(runtime, only="search")
    assert code == 0, lines
    assert [line.split(":")[0] for line in lines] == ["search_listings", "search_fts"][:len(lines)]


def test_a_live_hub_that_moved_on_gives_no_false_difference(runtime, world) -> None:
    """Events after the live positions are not replayed: each replay stops where its live
    projection stood in the snapshot."""
    with freeze_time(T0 + timedelta(hours=3)):
        channel = runtime.market.repository.get(uuid.UUID(world["channel"]))
        channel.debit(meta(), key="late", request_hash="hl", amount_minor=7, seller_account_id=world["seller-1"],
                      purpose="", now_s=int((T0 + timedelta(hours=3)).timestamp()))
        runtime.market.save(channel)  # in the log, not yet in the read models
    code, lines = run_replay(runtime)
    assert code == 0, "\n".join(lines)


def test_the_cli_on_postgres_drops_its_schema_and_keep_keeps_it(make_settings, monkeypatch, capsys) -> None:
    settings = make_settings("postgres")
    rt = build_runtime(settings)
    try:
        workload(rt)
    finally:
        rt.close()
    for name, value in (("AIMARKET_DATABASE_URL", settings.database_url), ("AIMARKET_DB_SCHEMA", settings.db_schema),
                        ("AIMARKET_SECRET", settings.secret_hex), ("AIMARKET_HUB_URL", settings.hub_url)):
        monkeypatch.setenv(name, value)
    before = scratch_schemas()
    assert main(["audit", "replay"]) == 0
    out = capsys.readouterr().out
    assert "ledger_balances: equal (" in out and "DIFFERS" not in out
    assert scratch_schemas() == before
    assert main(["audit", "replay", "--projection", "devices", "--keep"]) == 0
    kept = scratch_schemas() - before
    assert len(kept) == 1 and f"scratch store kept: {kept.pop()}" in capsys.readouterr().err
    for schema in scratch_schemas() - before:
        with psycopg.connect(pg_conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    assert main(["audit", "replay", "--projection", "nope"]) == 2
    assert main(["audit", "replay", "--in-place", "--projection", "devices"]) == 0
    assert "devices: rebuilt from 0" in capsys.readouterr().out


def export(runtime: Any, path: Any, edit: tuple[bytes, bytes] | None = None) -> Any:
    """``aimarket audit export`` to ``path``; ``edit`` replaces bytes in one debit's entry."""
    import json

    from ops.audit_trail_cli import audit_trail

    trail = audit_trail(runtime)
    trail.sign_head(force=True)
    with path.open("w") as fh:
        trail.export(lambda record: fh.write(json.dumps(record) + "\n"))
    if edit is not None:
        lines = path.read_bytes().splitlines(keepends=True)
        index = next(i for i, line in enumerate(lines) if b"Debited" in line and edit[0] in line)
        lines[index] = lines[index].replace(edit[0], edit[1], 1)
        path.write_bytes(b"".join(lines))
    return path


def test_an_export_replays_to_the_live_read_models(runtime, world, tmp_path) -> None:
    code, lines = run_replay(runtime, file=str(export(runtime, tmp_path / "log.jsonl")))
    assert code == 0, "\n".join(lines)
    assert any(line.startswith("ledger_postings: equal") for line in lines)


def test_an_edited_export_is_refused_by_the_tree_and_differs_in_balances(runtime, world, tmp_path) -> None:
    path = export(runtime, tmp_path / "log.jsonl", edit=(b'\\"amount_minor\\":101', b'\\"amount_minor\\":901'))
    code, lines = run_replay(runtime, file=str(path))
    text = "\n".join(lines)
    assert code == 1
    assert "audit_tree: refused [tree_inconsistent]: position" in text
    assert "ledger_balances: DIFFERS" in text and "changed channel_id=" in text and "spent_minor (live" in text
