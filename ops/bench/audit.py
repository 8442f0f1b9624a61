"""``audit verify`` over a log of mixed events with signatures, in events per second, against raw
Ed25519 verifications per second (PyNaCl, one core) measured in the same run; and the same
verify with its signature checks inline (``--workers 0``) as the baseline differing in one
setting, the process pool.

    python -m ops.bench.audit --test-services [--events 200000] [--rounds 3] [--quiet-load 2.0] [--stages]

The log is written straight into a fresh PostgreSQL schema (events built by the aggregates, as
the hub would record them, inserted in large batches; no HTTP): per 20 events, 8 node traces
(a heartbeat in an envelope signed by one of 64 enrolled devices), 1 purchase (its delivery
token signed by the platform key ``signing-1``) and 11 card-channel debits (over 500 channels).
So 45 % of the events carry a signature. Each round runs the full ``verify_log`` (decoding,
meta, stream versions, the audit tree recomputed leaf by leaf, the ledger replayed channel by
channel with its invariants, every signature under the key valid at its time) twice, pooled
and inline (the order alternating), and times PyNaCl verifying as many signatures as the log
holds. Every verify must report no problem; otherwise the run says so and exits 1.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
import uuid
from typing import Any

from ops.bench.audit_stages import raw_ed25519, stage_costs
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

META = {"actor": "system", "correlation_id": "bench-audit", "causation_id": ""}
HUB = "http://hub.bench"
DEVICES = 64
CHANNELS = 500
INSERT_BATCH = 5000


class LogWriter:
    """Builds the mixed log with the aggregates and inserts their stored events in batches."""

    def __init__(self, market: Any) -> None:
        from domain.model.keys import KxPrivateKey, SigningKey

        self.market = market
        self.pending: list[Any] = []
        self.written = 0
        self.hub_key = SigningKey.from_seed(bytes(market.secrets.signing_key("signing-1")))
        self.kx = KxPrivateKey.generate().public_key.to_multibase()
        self.devices = [(str(uuid.uuid4()), SigningKey.generate()) for _ in range(DEVICES)]
        self.chains = {device_id: (0, bytes(32)) for device_id, _ in self.devices}  # seq, last entry hash
        self.channels: list[Any] = []
        self.signatures: list[tuple[bytes, bytes, bytes]] = []  # a sample for the raw PyNaCl baseline

    def add(self, aggregate: Any) -> None:
        self.pending += aggregate.collect_events()
        if len(self.pending) >= INSERT_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.market.recorder.insert_events([self.market.mapper.to_stored_event(e) for e in self.pending])
            self.written += len(self.pending)
            self.pending = []

    def setup(self) -> None:
        from domain.model.channel import KEY_RETENTION_S, Channel
        from domain.model.device import Device

        for device_id, key in self.devices:
            self.add(Device(id=uuid.UUID(device_id), meta=META, account_id="seller-1", name="bench",
                            public_key=key.verify_key.to_multibase(), kid=key.verify_key.key_id,
                            kx_public_key=self.kx, endpoint="http://127.0.0.1:9090"))
        now_s = int(time.time())
        for i in range(CHANNELS):
            channel = Channel(id=uuid.uuid4(), meta=META, buyer_account_id=f"buyer-{i}", currency="USD", rail="card",
                              deposit_minor=10**12, funding_ref=f"pi_{i}", expiry_s=now_s + 10 * KEY_RETENTION_S,
                              fee_bps=500, unsigned_allowance_minor=0, buyer_wallet="", chain_channel_id="",
                              opened_at_s=now_s)
            self.channels.append(channel)
            self.add(channel)

    def trace(self, n: int) -> None:
        from domain.model import envelope as env
        from domain.model.jcs import canonical_json, sha256_sri
        from domain.model.traces import Trace

        device_id, key = self.devices[n % DEVICES]
        seq, prev = self.chains[device_id]
        seq += 1
        now_ms = time.time_ns() // 1_000_000
        body = {"started_ms": 0, "uptime_s": seq, "outbox_pending": 0}
        body_jcs = canonical_json(body)
        digest = env.entry_hash(prev, seq, "heartbeat", body_jcs, now_ms)
        entry = env.Entry(seq, "heartbeat", body, prev.hex(), digest.hex(), now_ms)
        envelope = env.issue_envelope(entry, device_id=device_id, audience=HUB, key=key, sent_ms=now_ms,
                                      nonce=secrets.token_urlsafe(16))
        self.chains[device_id] = (seq, digest)
        self.add(Trace(id=env_trace_id(device_id, seq), meta=META, device_id=device_id, seq=seq, kind="heartbeat",
                       entry_hash=digest.hex(), prev_hash=prev.hex(), created_ms=now_ms,
                       body_digest=sha256_sri(body_jcs), sent_ms=now_ms, nonce=envelope["proof"]["nonce"],
                       kid=key.verify_key.key_id, envelope=envelope, effect="none", effect_code=None))
        if len(self.signatures) < 20_000:
            from domain.model.vc import _hash_data  # the bytes the envelope's proof signs, for the raw baseline

            proof = {k: v for k, v in envelope["proof"].items() if k != "proofValue"}
            document = {k: v for k, v in envelope.items() if k != "proof"}
            message = _hash_data("eddsa-jcs-2022", proof, document, None)
            self.signatures.append((key.verify_key.to_bytes(), message, key.sign(message)))

    def purchase(self, n: int) -> None:
        from domain.model.delivery import issue_delivery_token, jwk_thumbprint
        from domain.model.keys import SigningKey
        from domain.model.purchase import Purchase

        device_id, device_key = self.devices[n % DEVICES]
        purchase_id, now_s = uuid.uuid4(), int(time.time())
        buyer = SigningKey.generate().verify_key
        claims = {"iss": HUB, "aud": device_id, "sub": str(purchase_id), "jti": f"jti-{purchase_id.hex}",
                  "iat": now_s, "start_by": now_s + 900, "exp": now_s + 86400, "listing_id": str(uuid.uuid4()),
                  "listing_version": 1, "content_hash": "sha256-" + "A" * 43 + "=", "size_bytes": 4096,
                  "byte_limit": 8192, "blocks": _BLOCKS, "cnf": {"jkt": jwk_thumbprint(buyer)},
                  "seller_keys": {"ed25519": device_key.verify_key.to_multibase(), "x25519": self.kx}}
        token = issue_delivery_token(claims, self.hub_key, "signing-1")
        self.add(Purchase(id=purchase_id, meta=META, buyer_account_id="buyer-1", seller_account_id="seller-1",
                          seller_device_id=device_id, listing_id=claims["listing_id"], listing_version=1,
                          channel_id=str(self.channels[0].id), price_minor=100, fee_minor=5, currency="USD",
                          idempotency_key=purchase_id.hex, request_hash="h", token=token, kid="signing-1",
                          jti=claims["jti"], cnf_jkt=claims["cnf"]["jkt"], issued_at_s=now_s, start_by_s=now_s + 900,
                          expires_at_s=now_s + 86400))

    def debit(self, n: int) -> None:
        channel = self.channels[n % CHANNELS]
        channel.debit(META, key=f"d-{n}", request_hash=f"h-{n}", amount_minor=100 + n % 7,
                      seller_account_id="seller-1", purpose="", now_s=int(time.time()))
        self.add(channel)


def env_trace_id(device_id: str, seq: int) -> uuid.UUID:
    from domain.model.traces import trace_id

    return trace_id(device_id, seq)


def _blocks() -> dict[str, Any]:
    from domain.model.blocks import BlockCommitment, block_hash

    return BlockCommitment.build(4096, 4096, [block_hash(bytes(4096))]).to_json()


_BLOCKS: dict[str, Any] = {}


def write_log(market: Any, events: int) -> tuple[int, list[tuple[bytes, bytes, bytes]], float]:
    """Write about ``events`` events; (events written, signature sample, seconds)."""
    _BLOCKS.update(_blocks())
    started = time.perf_counter()
    market.keyring()  # Keyring.Created: the platform key's start
    writer = LogWriter(market)
    writer.setup()
    n = 0
    while writer.written + len(writer.pending) < events:
        slot = n % 20
        if slot < 8:
            writer.trace(n)
        elif slot == 8:
            writer.purchase(n)
        else:
            writer.debit(n)
        n += 1
    writer.flush()
    return writer.written + 1, writer.signatures, time.perf_counter() - started


def timed_verify(runtime: Any, workers: int) -> dict[str, Any]:
    """One full verify; wall time, and CPU of this process and of the pool's (reaped) workers."""
    import resource

    from ops.audit import verify_log

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, cpu = time.perf_counter(), time.process_time()
    report = verify_log(runtime.market, runtime.views, workers=workers, pool_after_jobs=0 if workers else 10**12)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    events = report["events"]
    signatures = report["signatures"]
    main_us, worker_us = cpu / events * 1e6, worker_cpu / events * 1e6
    # What two idle cores would allow: the walk is one process, the checks spread over the rest.
    bound = 1e6 / max(main_us, (main_us + worker_us) / 2) if workers else 1e6 / (main_us + worker_us)
    return {"workers": workers, "events_per_s": round(events / elapsed), "seconds": round(elapsed, 2),
            "events": events, "signatures_verified": signatures["verified_jobs"], "pooled": signatures["pooled"],
            "walk_cpu_us_per_event": round(main_us, 1), "worker_cpu_us_per_event": round(worker_us, 1),
            "two_idle_cores_events_per_s": round(bound), "problems": len(report["problems"]),
            "first_problems": report["problems"][:3], "checked": signatures["checked"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events in the log (the issue's size: 1,000,000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="signature processes of the measured verify")
    parser.add_argument("--stages", action="store_true", help="also time each stage of the walk on its own, one "
                        "core, in CPU us per event (ops/bench/audit_stages.py)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    from ops.bootstrap import build_runtime

    env = {**service_env(args), "AIMARKET_DB_SCHEMA": fresh_schema("bench_audit"), "AIMARKET_SECRET": "ef" * 32}
    settings = postgres_settings(env)
    with bench_schema(settings):
        runtime = build_runtime(settings)
        try:
            written, sample, gen_s = write_log(runtime.market, args.events)
            emit({"log": {"events": written, "written_in_s": round(gen_s, 1), "loadavg": loadavg()}})
            gate = wait_for_quiet(args.quiet_load, args.quiet_wait_s)
            if args.stages:
                emit({"stages": stage_costs(runtime.market, sample)})
            rows = []
            for r in range(args.rounds):
                order = [args.workers, 0] if r % 2 == 0 else [0, args.workers]
                results = {w: timed_verify(runtime, w) for w in order}
                raw = raw_ed25519(sample, results[0]["signatures_verified"])
                row = {"round": r + 1, "pooled": results[args.workers], "inline": results[0],
                       "pooled_over_inline": ratio(results[args.workers]["events_per_s"], results[0]["events_per_s"]),
                       "raw_ed25519_per_s": raw["per_s"], "raw_ed25519_per_cpu_s": raw["per_cpu_s"],
                       "loadavg": loadavg()}
                rows.append(row)
                emit(row)
        finally:
            runtime.close()
    pooled = median([r["pooled"]["events_per_s"] for r in rows])
    raw = median([r["raw_ed25519_per_s"] for r in rows])
    problems = sum(r["pooled"]["problems"] + r["inline"]["problems"] for r in rows)
    emit({"summary": {
        "events": written, "verify_events_per_s": pooled,
        "inline_events_per_s": median([r["inline"]["events_per_s"] for r in rows]),
        "pooled_over_inline": median([r["pooled_over_inline"] for r in rows]), "raw_ed25519_per_s": raw,
        "verify_events_over_raw_verifications": ratio(pooled, raw),
        "raw_ed25519_per_cpu_s": median([r["raw_ed25519_per_cpu_s"] for r in rows]),
        "walk_cpu_us_per_event": median([r["pooled"]["walk_cpu_us_per_event"] for r in rows]),
        "worker_cpu_us_per_event": median([r["pooled"]["worker_cpu_us_per_event"] for r in rows]),
        "two_idle_cores_events_per_s": median([r["pooled"]["two_idle_cores_events_per_s"] for r in rows]),
        "target_events_per_s": 20_000, "target_met": bool(pooled and pooled >= 20_000),
        "problems": problems, "gate": gate, "loadavg": loadavg()}})
    return 0 if problems == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
