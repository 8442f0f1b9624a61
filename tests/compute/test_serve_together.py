"""``aim-node serve --compute-listen`` serves the registered compute assets beside delivery, in
one process (one stop for both), and their reports land in the node's one outbox, which the
same process's uplink delivers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from node.compute.client import open_session
from tests.compute.world import ECHO, REPO, World, env


def test_serve_also_serves_compute_assets_and_stops_both_on_sigterm(tmp_path: Path) -> None:
    world = World(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "--home", str(world.home), "serve", "--offline", "--hub-key",
         world.hub_key_arg, "--listen", "127.0.0.1:0", "--compute-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), cwd=REPO, text=True)
    try:
        lines = [json.loads(proc.stdout.readline() or "{}") for _ in range(2)]
        compute = next(line for line in lines if "assets" in line)
        delivery = next(line for line in lines if "assets" not in line)
        assert ECHO in compute["assets"] and delivery["listening"] != compute["listening"], lines
        with open_session(world.token(), world.buyer_key, world.hub_keys, seller=compute["listening"]) as session:
            assert session.invoke({"hello": "world"}).output == {"hello": "world"}
            final = session.close()
        assert final["credentialSubject"]["final"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()
    assert [kind for kind, _ in world.outbox() if kind.startswith("invoke_")] == ["invoke_bound", "invoke_final"]
