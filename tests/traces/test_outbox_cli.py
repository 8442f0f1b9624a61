"""``aim-node outbox status``: what waits for the hub, and exit 1 while parked at a refused entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from node.outbox import EntryRefused, Outbox
from tests.delivery.world import REPO, env


def status(home: Path) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "node.cli", "--home", str(home), "outbox", "status"],
                          capture_output=True, text=True, env=env(), cwd=REPO, timeout=60)
    return done.returncode, json.loads(done.stdout)


def test_outbox_status_shows_pending_entries_and_a_parked_one(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    for n in range(3):
        box.append("heartbeat", {"started_ms": 0, "uptime_s": n, "outbox_pending": 0}, 1000)
    code, shown = status(tmp_path)
    assert code == 0 and shown["pending"] == 3 and shown["parked"] is None and shown["head"]["seq"] == 3

    def refuse(entry) -> None:
        raise EntryRefused("device_suspended", "the hub refused")

    box.deliver(refuse, 2000)
    box.close()
    code, shown = status(tmp_path)
    assert code == 1
    assert shown["parked"] == {"seq": 1, "kind": "heartbeat", "code": "device_suspended", "at_ms": 2000, "attempts": 1}
