"""A full rebuild of every projection from a log of mixed events on PostgreSQL, in events
per second, against a raw read of the same events (every notification selected in batches
and decoded, nothing applied) measured in the same run.

    python3 -m ops.bench.replay --test-services [--events 1000000] [--rounds 3] [--quiet-load 2.0]

The log is written straight into a fresh schema (events built by the aggregates, as the hub
records them, inserted in batches of 5,000 stored events; no HTTP): per 20 events, 8
heartbeat traces of 64 devices, 1 purchase with its redemption on every other one, 10 card
channel debits over 500 channels and 1 event of another kind (a listing published every
1,000 events, else a device-index entry). The clock is frozen per chunk of events and moves
a minute per 2,000 events, so the trust projection scores as it would on a live hub.

Each round rebuilds every projection into its own scratch schema (``ops.audit_replay``'s
path: ``rebuild_all``, one shared read of the log in batches, each projection applying its
events in its own buffered transaction) and then reads the whole log raw, timing both; ``rebuild_over_raw`` is the ratio of their rates. Target (issue 13): >= 40k events/s
and >= 0.60 of the raw read. Figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from ops.bench.common import (
    add_common_args,
    bench_schema,
    emit,
    fresh_schema,
    loadavg,
    median,
    postgres_settings,
    ratio,
    service_env,
    wait_for_quiet,
)

META = {"actor": "system", "correlation_id": "bench-replay", "causation_id": ""}
DEVICES = 64
CHANNELS = 500
INSERT_BATCH = 5_000
READ_BATCH = 2_000
T0 = datetime(2026, 6, 1, tzinfo=UTC)


class LogWriter:
    """The mixed log, built by the aggregates, inserted as stored events in batches."""

    def __init__(self, market: Any) -> None:
        self.market = market
        self.pending: list[Any] = []
        self.written = 0
        self.devices: list[str] = []
        self.channels: list[Any] = []

    def add(self, *aggregates: Any) -> None:
        for aggregate in aggregates:
            self.pending += aggregate.collect_events()
        if len(self.pending) >= INSERT_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.market.recorder.insert_events([self.market.mapper.to_stored_event(e) for e in self.pending])
            self.written += len(self.pending)
            self.pending = []

    def setup(self, now_s: int) -> None:
        from domain.model.channel import KEY_RETENTION_S, Channel
        from domain.model.device import Device

        for i in range(DEVICES):
            device = Device(id=uuid.uuid4(), meta=META, account_id=f"seller-{i % 8}", name="bench", public_key="pk",
                            kid="k1", kx_public_key="kx", endpoint="http://127.0.0.1:9090")
            self.devices.append(str(device.id))
            self.add(device)
        for i in range(CHANNELS):
            channel = Channel(id=uuid.uuid4(), meta=META, buyer_account_id=f"buyer-{i}", currency="USD", rail="card",
                              deposit_minor=10**12, funding_ref=f"pi_{i}", expiry_s=now_s + 10 * KEY_RETENTION_S,
                              fee_bps=500, unsigned_allowance_minor=0, buyer_wallet="", chain_channel_id="",
                              opened_at_s=now_s)
            self.channels.append(channel)
            self.add(channel)

    def event(self, n: int, now_s: int) -> None:
        from domain.model.traces import Trace

        slot = n % 20
        if slot < 8:
            device_id = self.devices[n % DEVICES]
            self.add(Trace(id=uuid.uuid4(), meta=META, device_id=device_id, seq=n, kind="heartbeat", entry_hash="h",
                           prev_hash="p", created_ms=now_s * 1000, body_digest="d", sent_ms=now_s * 1000, nonce=str(n),
                           kid="k1", envelope={}, effect="none", effect_code=None))
        elif slot == 8:
            self.purchase(n, now_s)
        elif slot == 9:
            self.other(n)
        else:
            channel = self.channels[n % CHANNELS]
            channel.debit(META, key=f"d-{n}", request_hash=f"h-{n}", amount_minor=100 + n % 7,
                          seller_account_id=f"seller-{n % 8}", purpose="", now_s=now_s)
            self.add(channel)

    def purchase(self, n: int, now_s: int) -> None:
        from domain.model.purchase import Purchase

        device_id = self.devices[n % DEVICES]
        purchase = Purchase(id=uuid.uuid4(), meta=META, buyer_account_id=f"buyer-{n % CHANNELS}",
                            seller_account_id=f"seller-{n % 8}", seller_device_id=device_id,
                            listing_id=str(uuid.uuid4()), listing_version=1, channel_id=str(self.channels[0].id),
                            price_minor=100, fee_minor=5, currency="USD", idempotency_key=str(n), request_hash="h",
                            token="t", kid="signing-1", jti=f"jti-{n}", cnf_jkt="j", issued_at_s=now_s,
                            start_by_s=now_s + 900, expires_at_s=now_s + 86400)
        if n % 40 == 8:
            purchase._token_redeemed(meta=META, jti=purchase.jti, device_id=device_id, buyer_jkt="j",
                                     redeemed_at_ms=now_s * 1000 + 10)
        self.add(purchase)

    def other(self, n: int) -> None:
        from domain.model.index import Index
        from domain.model.listing import Listing

        if n % 1000 == 9:
            device_id = self.devices[n % DEVICES]
            self.add(Listing(id=uuid.uuid4(), meta=META, account_id=f"seller-{n % 8}", device_id=device_id,
                             listing_key=str(n), metadata={"title": f"dataset {n}", "kind": "dataset",
                             "category": "health", "licence": "CC-BY-4.0", "tags": ["bench"],
                             "description": "synthetic"}, price_minor=1000, currency="USD", proof={}))
        else:
            self.add(Index(id=uuid.uuid4(), meta=META, kind="bench", target_id=str(n)))


def allow_frozen_time() -> None:
    """Store freezegun's datetimes like real ones (as the test suite's conftest does)."""
    from eventsourcing.persistence import DatetimeAsISO
    from freezegun.api import FakeDatetime

    from domain.app.marketplace import Marketplace

    class FakeDatetimeAsISO(DatetimeAsISO):
        type = FakeDatetime

    register = Marketplace.register_transcodings

    def register_with_freezegun(self: Any, transcoder: Any) -> None:
        register(self, transcoder)
        transcoder.register(FakeDatetimeAsISO())

    Marketplace.register_transcodings = register_with_freezegun  # type: ignore[method-assign]


def write_log(market: Any, events: int) -> tuple[int, float]:
    """About ``events`` events in the log; (events written, seconds)."""
    from freezegun import freeze_time

    started = time.perf_counter()
    writer = LogWriter(market)
    with freeze_time(T0) as frozen:
        market.keyring()
        writer.setup(int(T0.timestamp()))
        n = 0
        while writer.written + len(writer.pending) < events:
            if n % 2000 == 0:
                frozen.move_to(T0 + timedelta(minutes=n // 2000))
            writer.event(n, int((T0 + timedelta(minutes=n // 2000)).timestamp()))
            n += 1
        writer.flush()
    return writer.written + 1, time.perf_counter() - started


def raw_read(market: Any) -> tuple[int, float]:
    """Every notification selected in batches and decoded; (events, seconds)."""
    started, count, position = time.perf_counter(), 0, 0
    recorder, mapper = market.recorder, market.mapper
    while batch := recorder.select_notifications(start=position, limit=READ_BATCH, inclusive_of_start=False):
        for notification in batch:
            mapper.to_domain_event(notification)
        count += len(batch)
        position = batch[-1].id
    return count, time.perf_counter() - started


#: The baselines, each differing from ``aimarket audit replay``'s scratch runner
#: (``ops.audit_replay.SCRATCH_WRITES``) in one named setting.
BASELINES: dict[str, dict[str, Any]] = {
    "uncoalesced": {"coalesce_writes": False},  # INSERTs one by one
    "unbuffered": {"buffer_writes": False},  # no projection batch buffers (balances, audit tree, trust)
    "durable": {"durable": True},  # every commit waits for the WAL flush
    "batch2000": {"batch_size": 2_000},  # the earlier transaction size
    "separate-reads": {"shared_read": False},  # each projection reads and decodes the log on its own
}


def rebuild(runtime: Any, *, parallel: bool, **overrides: Any) -> tuple[dict[str, float], float]:
    """Every projection rebuilt from 0 into one scratch schema, as ``aimarket audit replay``
    does (``overrides``: a baseline's setting); (seconds per projection, total)."""
    from ops.audit_replay import rebuild_all, scratch_runner
    from ops.replay_store import ScratchStore
    from projections.registry import all_projections

    shared_read = overrides.pop("shared_read", True)
    scratch = ScratchStore(runtime.settings)
    try:
        per: dict[str, float] = {}
        started = time.perf_counter()
        runners = [scratch_runner(p, recorder=runtime.market.recorder, mapper=runtime.market.mapper,
                                  views=scratch.views, **overrides)
                   for p in all_projections()]
        for runner in runners:
            runner.setup()

        def note(line: str) -> None:
            name, _, rest = line.partition(": replayed ")
            per[name] = float(rest.rsplit(" in ", 1)[1].split()[0])

        refused = rebuild_all(runners, {}, note, parallel=parallel, shared_read=shared_read)
        if refused:
            raise SystemExit(f"rebuild refused: {refused}")
        return per, time.perf_counter() - started
    finally:
        scratch.drop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", choices=sorted(BASELINES), help="also rebuild each round with this one "
                        "setting changed (uncoalesced: INSERTs one by one; unbuffered: no projection batch buffers; "
                        "durable: synchronous commits; batch2000: 2,000 events per transaction; separate-reads: each projection "
                        "reads the log on its own)")
    parser.add_argument("--parallel", action="store_true", help="rebuild independent projections in threads "
                        "(default: one after the other, as 'aimarket audit replay' does)")
    args = parser.parse_args(argv)
    from ops.bootstrap import build_runtime
    from projections.search.projection import shared_embedder

    settings = postgres_settings(service_env(args))
    settings = dataclasses.replace(settings, db_schema=fresh_schema("bench_replay"),
                                   secret_hex=settings.secret_hex or secrets.token_hex(32))
    allow_frozen_time()
    with bench_schema(settings):
        runtime = build_runtime(settings)
        try:
            events, write_s = write_log(runtime.market, args.events)
            emit({"log": {"events": events, "write_s": round(write_s, 1)}})
            shared_embedder().embed_one("warm up")  # the model loads once, outside the timing
            quiet = wait_for_quiet(args.quiet_load, args.quiet_wait_s)
            rates, raws, plain = [], [], []
            for round_ in range(args.rounds):
                per, total_s = rebuild(runtime, parallel=args.parallel)
                read, raw_s = raw_read(runtime.market)
                rates.append(events / total_s)
                raws.append(read / raw_s)
                record = {"round": round_, "rebuild_events_per_s": round(events / total_s),
                          "rebuild_s": round(total_s, 1), "per_projection_s": per,
                          "raw_read_events_per_s": round(read / raw_s), "raw_read_s": round(raw_s, 1),
                          "status": {"rebuilt": len(per), "failed": 0}}
                if args.baseline:  # the baseline differing in one setting
                    plain_per, plain_s = rebuild(runtime, parallel=args.parallel, **BASELINES[args.baseline])
                    plain.append(events / plain_s)
                    record |= {"baseline_events_per_s": round(events / plain_s), "baseline_per_projection_s":
                               plain_per}
                emit({**record, "load": loadavg()})
            emit({"summary": {"events": events, "rounds": args.rounds, "rebuild_events_per_s": round(median(rates) or 0),
                              "raw_read_events_per_s": round(median(raws) or 0),
                              "rebuild_over_raw": ratio(median(rates), median(raws)),
                              "baseline": args.baseline,
                              "baseline_events_per_s": round(median(plain)) if plain else None,
                              "rebuild_over_baseline": ratio(median(rates), median(plain)) if plain else None,
                              "target_events_per_s": 40_000, "target_ratio": 0.6, **quiet, "load_end": loadavg()}})
        finally:
            runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
