"""Settlement workers racing on one channel as real processes, SIGKILLed at random moments.

``race_once`` closes a fresh channel (new wallets, two sellers, vouchers), starts two or
three ``tests.money.settle_process`` workers on it at once (each pausing a random 0-300 ms
at every stage), SIGKILLs each at a random moment after it started or lets it run, then
runs one more worker until the settlement is confirmed, and checks the end state: exactly
one ``ChannelSettled`` log, the settlement confirmed by that transaction, the channel
settled and ``verify_chain`` clean for it (the ledger equal to the chain), and no worker
that ended other than confirmed, busy (exit 3: lease held, or the chain said "not yet") or
killed. Used by ``tests/money/test_settlement_soak.py`` (a few runs) and by
``ops/bench/settlement_race.py`` (the 20-run soak, by hand).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ops.chain_audit import verify_chain
from tests.money.chain_helpers import debit, deposit, funded_key, open_channel, party, settle_logs

REPO = Path(__file__).resolve().parents[2]
BUSY = 3  # settle_process: Unavailable (lease held elsewhere, not mined yet)
FINISH_TRIES = 4


class Worker:
    """One settle_process, its output lines with the time each arrived."""

    def __init__(self, env: dict[str, str], channel_id: str, seed: int, *, no_lease: bool) -> None:
        args = [sys.executable, "-m", "tests.money.settle_process", channel_id, "--jitter", str(seed)]
        self.process = subprocess.Popen(args + (["--no-lease"] if no_lease else []), cwd=REPO, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines: list[tuple[float, str]] = []
        self.killed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.lines.append((time.monotonic(), line.strip()))

    def started_at(self) -> float | None:
        return next((t for t, line in self.lines if line == "started"), None)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.killed = True

    def finish(self, timeout_s: float = 120) -> dict[str, Any]:
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        stages = [line.removeprefix("stage:") for _, line in self.lines if line.startswith("stage:")]
        last = json.loads(self.lines[-1][1]) if self.lines and self.lines[-1][1].startswith("{") else None
        return {"code": code, "killed": self.killed, "stages": stages, "result": last}


def closed_channel(hub: dict[str, Any], hub_url: str) -> tuple[dict[str, Any], list[Any]]:
    """A channel with two sellers paid by vouchers, closed (settlement pending)."""
    client, chain, cc, funder = hub["client"], hub["chain"], hub["chain_client"], hub["accounts"][0]
    buyer, s1, s2 = (party(client, [role], funded_key(chain, funder), hub_url) for role in ("buyer", "seller", "seller"))
    now = int(chain.w3.eth.get_block("latest")["timestamp"])
    tx, _ = deposit(chain, funder, hub["deployment"], buyer.key, 2_000_000, now + 7200, hub=cc)
    opened = open_channel(client, buyer, tx)
    assert opened.status_code == 201, opened.json
    channel = opened.json
    for seller, amount, cumulative in ((s1, 700_000, 700_000), (s2, 333_333, 1_033_333)):
        r = debit(client, buyer, channel, seller, amount, cumulative=cumulative, domain=cc.domain())
        assert r.status_code == 201, r.json
    closed = client.simulate_post(f"/v1/channels/{channel['id']}/close", headers=buyer.headers)
    assert closed.status_code == 200 and closed.json["status"] == "closing"
    return channel, [buyer, s1, s2]


def race_once(hub: dict[str, Any], env: dict[str, str], hub_url: str, rng: random.Random, *, workers: int,
              no_lease: bool, kill_share: float = 0.7) -> dict[str, Any]:
    """One race; returns what happened (raises AssertionError on a wrong end state)."""
    begin = time.monotonic()
    channel, _parties = closed_channel(hub, hub_url)
    racers = [Worker(env, channel["id"], rng.randrange(1 << 30), no_lease=no_lease) for _ in range(workers)]
    kill_after = [rng.uniform(0.0, 1.5) if rng.random() < kill_share else None for _ in racers]
    deadline = time.monotonic() + 90
    while any(w.process.poll() is None for w in racers) and time.monotonic() < deadline:
        for w, after in zip(racers, kill_after, strict=True):
            started = w.started_at()
            if after is not None and started is not None and time.monotonic() >= started + after:
                w.kill()
        time.sleep(0.01)
    for w in racers:
        w.kill()  # anything still running at the deadline
    outcomes = [w.finish() for w in racers]
    finisher: list[dict[str, Any]] = []
    while not any(o["code"] == 0 for o in outcomes + finisher) and len(finisher) < FINISH_TRIES:
        finisher.append(Worker(env, channel["id"], rng.randrange(1 << 30), no_lease=False).finish())
    seen = {"channel": channel["id"], "racers": outcomes, "finishers": finisher, "no_lease": no_lease}
    for o in outcomes + finisher:
        assert o["code"] in (0, BUSY, -signal.SIGKILL), seen
        assert o["code"] != 0 or o["result"]["status"] == "confirmed", seen
    assert any(o["code"] == 0 for o in outcomes + finisher), seen
    try:
        check_settled_once(hub, channel)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}") from exc
    return {"workers": workers, "no_lease": no_lease, "killed": sum(o["killed"] for o in outcomes),
            "killed_at": [o["stages"][-1] if o["stages"] else "before-any-stage" for o in outcomes if o["killed"]],
            "finishers": len(finisher), "seconds": round(time.monotonic() - begin, 1)}


def check_settled_once(hub: dict[str, Any], channel: dict[str, Any]) -> None:
    """Exactly one close on chain, and the ledger equal to it."""
    market = hub["rt"].market
    logs = settle_logs(hub["chain"], hub["deployment"].channels, channel["chain_channel_id"])
    assert len(logs) == 1, logs
    settlement = market.settlement.settlement(channel["id"])
    assert settlement.status == "confirmed" and settlement.tx_hash == "0x" + bytes(logs[0]["transactionHash"]).hex()
    view = market.money.channel(channel["id"]).to_public()
    assert (view["status"], view["settled_minor"], view["refunded_minor"]) == ("settled", 1_033_333, 966_667)
    report = verify_chain(market, hub["chain_client"], [channel["id"]])
    assert report["ok"], report
