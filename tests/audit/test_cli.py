"""``aimarket audit export``, ``sign-head`` and ``check-proof``: a third party with only the hub's
public key verifies an export, an inclusion proof and a consistency proof offline. check-proof
runs as a process whose network is cut and whose database settings point nowhere: it never
needs either."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.cli import main
from tests.audit.test_audit_tree import add_indexes
from tests.audit.world import build

ROOT = Path(__file__).resolve().parents[2]
CHILD = (
    "import socket, sys\n"
    "def refuse(*a, **k):\n    raise OSError('network access attempted by check-proof')\n"
    "socket.socket.connect = refuse\nsocket.create_connection = refuse\nsocket.getaddrinfo = refuse\n"
    "from ops.cli import main\nsys.exit(main(sys.argv[1:]))\n"
)


def check_proof(path: Path, *keys: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMARKET_")}
    env.update(PYTHONPATH=str(ROOT), AIMARKET_DATABASE_URL="postgresql://nobody@127.0.0.1:1/nowhere")
    args = [a for key in keys for a in ("--hub-key", key)]
    return subprocess.run([sys.executable, "-c", CHILD, "audit", "check-proof", str(path), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)


@pytest.fixture
def hub(make_settings, monkeypatch):
    """An embedded hub with a log, its tree and a signed head; the CLI reads the same settings."""
    from ops.bootstrap import build_runtime

    settings = make_settings("sqlite")
    runtime = build_runtime(settings)
    for key, value in {"AIMARKET_DATA_DIR": str(settings.data_dir), "AIMARKET_SECRET": settings.secret_hex,
                       "AIMARKET_HUB_URL": settings.hub_url}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AIMARKET_DATABASE_URL", raising=False)
    yield build(runtime)
    runtime.close()


def test_export_then_check_proof_offline(hub, tmp_path, capsys) -> None:
    key = hub.trail.public_key("signing-1").to_multibase()
    add_indexes(hub.runtime, 3)
    assert main(["audit", "sign-head"]) == 0  # catches the tree up, signs a second head
    signed = json.loads(capsys.readouterr().out)
    assert signed["tree_size"] == len(hub.positions) + 3 and signed["kid"] == "signing-1"
    out = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["type"] == "aimarket.audit.export"
    assert sum(json.loads(line)["type"] == "tree_head" for line in lines) == 2

    result = check_proof(out, key)
    assert result.returncode == 0, result.stderr
    assert f"{len(hub.positions) + 3} entries, 2 signed tree heads, all verified" in result.stdout

    tampered = tmp_path / "tampered.jsonl"
    edited = [json.loads(line) for line in lines]
    entry = next(r for r in edited if r["type"] == "entry" and '"amount_minor":11' in r["entry"].get("state", ""))
    entry["entry"]["state"] = entry["entry"]["state"].replace('"amount_minor":11', '"amount_minor":91')
    tampered.write_text("".join(json.dumps(r) + "\n" for r in edited))
    result = check_proof(tampered, key)
    assert result.returncode == 1
    assert "error [proof_invalid]" in result.stderr and "does not match the entries" in result.stderr

    other = hub.trail.public_key("signing-9").to_multibase()  # a key the hub never used
    result = check_proof(out, other)
    assert result.returncode == 1 and "no signature by" in result.stderr


def test_inclusion_and_consistency_proofs_offline(hub, tmp_path) -> None:
    key = hub.trail.public_key("signing-1").to_multibase()
    first = hub.trail.latest_head()
    position = hub.positions[3]
    proof = tmp_path / "proof.json"
    proof.write_text(json.dumps(hub.trail.proof(position)))
    result = check_proof(proof, key)
    assert result.returncode == 0, result.stderr
    assert f"the entry at position {position}" in result.stdout

    bundle = json.loads(proof.read_text())
    bundle["entry"]["state"] = bundle["entry"]["state"].replace('"amount_minor":1', '"amount_minor":7', 1)
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(bundle))
    result = check_proof(changed, key)
    assert result.returncode == 1 and result.stderr.startswith("error [proof_invalid]:")
    assert len(result.stderr.strip().splitlines()) == 1

    add_indexes(hub.runtime, 2)
    hub.catch_up()
    second = hub.trail.sign_head(force=True)
    consistency = tmp_path / "consistency.json"
    consistency.write_text(json.dumps(hub.trail.consistency(first.head.tree_size, second.head.tree_size)))
    result = check_proof(consistency, key)
    assert result.returncode == 0, result.stderr
    assert f"extends the tree of size {first.head.tree_size}" in result.stdout


def test_check_proof_refuses_bad_input_in_one_line(tmp_path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("not json")
    result = check_proof(junk, "z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK")
    assert result.returncode == 1 and result.stderr.startswith("error [proof_invalid]:")
    result = check_proof(junk, "not-a-key")
    assert result.returncode == 2 and result.stderr.startswith("error [invalid_input]:")
    result = check_proof(tmp_path / "missing.json", "z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK")
    assert result.returncode == 2 and "cannot read" in result.stderr
