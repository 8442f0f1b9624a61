"""One outbox per node: the compute server's entries and the delivery server's share one chain.

The compute server (``aim-node compute serve``) and the delivery server with its uplink
(``aim-node serve``) are separate processes writing ``<home>/outbox.sqlite``; these tests run
them as separate processes too: appends from both stay one dense, valid chain, and a compute
process SIGKILLed between appending an entry and forgetting it does not append it twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from node.compute.run import paths
from node.compute.store import SessionStore
from node.outbox import Outbox

REPO = Path(__file__).resolve().parents[2]
N = 60

_COMPUTE = textwrap.dedent("""
    import sys
    from node.compute.store import SessionStore, op_outbox
    home, n = sys.argv[1], int(sys.argv[2])
    store = SessionStore(f"{home}/compute.sqlite", f"{home}/outbox.sqlite")
    store.recover()
    for i in range(n):
        store.commit_now(op_outbox("invoke_bound", {"jti": f"jti-{i:04d}", "bound_at_ms": i}, 1000 + i))
    store.close()
""")

_DELIVERY = textwrap.dedent("""
    import sys
    from node.outbox import Outbox
    home, n = sys.argv[1], int(sys.argv[2])
    outbox = Outbox(f"{home}/outbox.sqlite")
    for i in range(n):
        outbox.append("heartbeat", {"started_ms": 0, "uptime_s": i, "outbox_pending": 0}, 2000 + i)
    outbox.close()
""")

# Dies by SIGKILL right after the entry reached the outbox, before its pending row is deleted.
_CRASH = textwrap.dedent("""
    import os, signal, sys
    from node.compute.store import SessionStore, op_outbox
    from node.outbox import Outbox
    home = sys.argv[1]
    store = SessionStore(f"{home}/compute.sqlite", f"{home}/outbox.sqlite")
    real = Outbox.append
    def append_then_die(self, kind, body, now_ms):
        entry = real(self, kind, body, now_ms)
        if body.get("jti") == "jti-crash":
            os.kill(os.getpid(), signal.SIGKILL)
        return entry
    Outbox.append = append_then_die
    store.commit_now(op_outbox("invoke_final", {"jti": "jti-before", "receipt": None}, 10))
    store.commit_now(op_outbox("invoke_final", {"jti": "jti-crash", "receipt": None}, 11))
""")


def _run(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_compute_server_writes_the_nodes_one_outbox(tmp_path: Path) -> None:
    assert paths(tmp_path) == (tmp_path / "compute.sqlite", tmp_path / "outbox.sqlite")


def test_two_processes_appending_at_once_keep_one_dense_chain(tmp_path: Path) -> None:
    compute, delivery = _run(_COMPUTE, str(tmp_path), str(N)), _run(_DELIVERY, str(tmp_path), str(N))
    assert compute.wait(60) == 0 and delivery.wait(60) == 0
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        assert outbox.verify_chain() == 2 * N
        entries = outbox.entries()
        assert [e.seq for e in entries] == list(range(1, 2 * N + 1))
        assert sorted(e.body["jti"] for e in entries if e.kind == "invoke_bound") == [f"jti-{i:04d}" for i in range(N)]
        assert sorted(e.body["uptime_s"] for e in entries if e.kind == "heartbeat") == list(range(N))
    finally:
        outbox.close()


def test_an_entry_moved_just_before_a_sigkill_is_not_moved_twice(tmp_path: Path) -> None:
    crashed = _run(_CRASH, str(tmp_path))
    assert crashed.wait(60) == -signal.SIGKILL
    Outbox(tmp_path / "outbox.sqlite").append("heartbeat", {"started_ms": 0, "uptime_s": 1, "outbox_pending": 0},
                                              12)  # the delivery server went on meanwhile
    store = SessionStore(tmp_path / "compute.sqlite", tmp_path / "outbox.sqlite")
    assert store._read.execute("SELECT COUNT(*) FROM pending_outbox").fetchone()[0] == 1  # the crash left it
    assert store.recover() == 0
    store.close()
    restarted = _run(_COMPUTE, str(tmp_path), "1")  # a restart recovers, then goes on
    assert restarted.wait(60) == 0
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        assert outbox.verify_chain() == 4
        assert [(e.kind, e.body.get("jti")) for e in outbox.entries()] == [
            ("invoke_final", "jti-before"), ("invoke_final", "jti-crash"), ("heartbeat", None),
            ("invoke_bound", "jti-0000")]
    finally:
        outbox.close()
