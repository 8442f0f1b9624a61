"""The committed artifacts are exactly what the pinned compiler makes from the sources."""

from __future__ import annotations

import hashlib
import json

import pytest

from ops.adapters.evm.compile import (
    CONTRACT_NAMES,
    artifact_path,
    compile_contract,
    load_artifact,
    main,
    render_artifact,
    source_path,
)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_recompiling_gives_byte_identical_artifact(name: str) -> None:
    assert render_artifact(compile_contract(name)) == artifact_path(name).read_bytes()


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_artifact_records_compiler_and_source_hash(name: str) -> None:
    artifact = json.loads(artifact_path(name).read_text())
    assert artifact["compiler"]["version"] == "0.4.3"
    assert artifact["compiler"]["evm_version"] == "prague"
    assert artifact["source_sha256"] == hashlib.sha256(source_path(name).read_bytes()).hexdigest()
    assert artifact["bytecode"].startswith("0x") and artifact["abi"]
    assert load_artifact(name) == artifact


def test_check_mode_passes_on_committed_artifacts() -> None:
    assert main(["--check"]) == 0
