"""``aim-node compute register|serve|invoke``: one line with the code on bad input, JSON otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.delivery.keys import save_buyer_key
from tests.compute.world import ECHO, EXAMPLES, REPO, Node, World, env


def _cli(world: World, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "--home", str(world.home), *args], capture_output=True,
                          text=True, env=env(), cwd=REPO, timeout=120)


def test_register_checks_the_manifest_and_its_entry_point(tmp_path: Path) -> None:
    world = World(tmp_path)
    done = _cli(world, "compute", "register", str(EXAMPLES / "csvstats.json"), "--listing",
                "00000000-0000-5000-8000-0000000000c1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["unit"] == "rows"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads((EXAMPLES / "echo.json").read_text()), "entry_point": "nowhere:run"}))
    done = _cli(world, "compute", "register", str(bad), "--listing", "00000000-0000-5000-8000-0000000000c2")
    assert done.returncode == 2 and done.stderr.startswith("error [compute_entry_point_invalid]:")
    assert len(done.stderr.strip().splitlines()) == 1
    bad.write_text("{}")
    done = _cli(world, "compute", "register", str(bad), "--listing", "00000000-0000-5000-8000-0000000000c2")
    assert done.returncode == 2 and done.stderr.startswith("error [compute_asset_invalid]:")


@pytest.mark.slow
def test_invoke_from_the_command_line(tmp_path: Path) -> None:
    world = World(tmp_path)
    node = Node(world)
    try:
        save_buyer_key(world.buyer_key, tmp_path / "buyer.jwk")
        (tmp_path / "token.jwt").write_text(world.token(listing=ECHO, price=4, budget=12) + "\n")
        done = _cli(world, "compute", "invoke", "--token", str(tmp_path / "token.jwt"), "--key",
                    str(tmp_path / "buyer.jwk"), "--input", '{"hello": "world"}', "--repeat", "4", "--seller",
                    node.address, "--hub-key", world.hub_key_arg, "--receipt", str(tmp_path / "receipt.json"))
    finally:
        node.stop()
    out = json.loads(done.stdout)
    assert done.returncode == 1  # the fourth call did not fit the budget
    assert out["results"][:3] == [{"output": {"hello": "world"}, "units": 1, "amount_minor": 4}] * 3
    assert out["results"][3]["error"] == "budget_exhausted" and out["results"][3]["amount_needed_minor"] == 4
    assert out["cumulative_amount_minor"] == 12
    final = json.loads((tmp_path / "receipt.json").read_text())["credentialSubject"]
    assert final["final"] and final["end_reason"] in ("budget", "closed")
