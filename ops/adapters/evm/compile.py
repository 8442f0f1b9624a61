"""Compile the Vyper contracts into committed, reproducible JSON artifacts.

Run ``python -m ops.adapters.evm.compile`` after editing a contract and commit the result;
``python -m ops.adapters.evm.compile --check`` exits non-zero when a committed artifact is stale.
Compilation is offline (the vyper Python API) and deterministic: same source + same
compiler version + same settings -> byte-identical artifact files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
CONTRACTS_DIR = PACKAGE_DIR / "contracts"
ARTIFACTS_DIR = PACKAGE_DIR / "artifacts"
CONTRACT_NAMES = ("TestToken", "Channels")
EVM_VERSION = "prague"
OPTIMIZE = "gas"
COMPILER_VERSION = "0.4.3"


def source_path(name: str) -> Path:
    """Path of the Vyper source of contract ``name``."""
    return CONTRACTS_DIR / f"{name}.vy"


def artifact_path(name: str) -> Path:
    """Path of the committed JSON artifact of contract ``name``."""
    return ARTIFACTS_DIR / f"{name}.json"


def compile_contract(name: str) -> dict[str, Any]:
    """Compile contract ``name`` and return its artifact (abi, bytecode, compiler, source hash).

    Raises:
        RuntimeError: the installed vyper is not the pinned version (artifacts would differ).
    """
    import vyper  # imported lazily: the runtime adapter only needs the committed artifacts
    from vyper.compiler.settings import OptimizationLevel, Settings

    if vyper.__version__ != COMPILER_VERSION:
        raise RuntimeError(f"vyper {COMPILER_VERSION} required, found {vyper.__version__}")
    source_bytes = source_path(name).read_bytes()
    settings = Settings(evm_version=EVM_VERSION, optimize=OptimizationLevel.from_string(OPTIMIZE))
    out = vyper.compile_code(
        source_bytes.decode("utf-8"),
        contract_path=f"{name}.vy",
        output_formats=["abi", "bytecode", "bytecode_runtime"],
        settings=settings,
    )
    return {
        "contract_name": name,
        "source_path": f"ops/adapters/evm/contracts/{name}.vy",
        "source_sha256": hashlib.sha256(source_bytes).hexdigest(),
        "compiler": {
            "name": "vyper",
            "version": vyper.__version__,
            "long_version": getattr(vyper, "__long_version__", vyper.__version__),
            "evm_version": EVM_VERSION,
            "optimize": OPTIMIZE,
        },
        "abi": out["abi"],
        "bytecode": out["bytecode"],
        "bytecode_runtime": out["bytecode_runtime"],
    }


def render_artifact(artifact: dict[str, Any]) -> bytes:
    """Serialise an artifact canonically (sorted keys, fixed indent, trailing newline)."""
    return (json.dumps(artifact, indent=2, sort_keys=True) + "\n").encode("utf-8")


def load_artifact(name: str) -> dict[str, Any]:
    """Load the committed artifact of ``name``, refusing one built from a different source.

    Raises:
        RuntimeError: the artifact's source hash does not match the source on disk.
    """
    artifact = json.loads(artifact_path(name).read_text("utf-8"))
    src = source_path(name)
    if src.exists():
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        if digest != artifact["source_sha256"]:
            raise RuntimeError(f"{artifact_path(name)} is stale: run `python -m ops.adapters.evm.compile` and commit it")
    return artifact


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: write artifacts, or with ``--check`` verify they are up to date."""
    parser = argparse.ArgumentParser(prog="python -m ops.adapters.evm.compile", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if an artifact is stale")
    args = parser.parse_args(argv)
    stale = []
    for name in CONTRACT_NAMES:
        rendered = render_artifact(compile_contract(name))
        path = artifact_path(name)
        if args.check:
            if not path.exists() or path.read_bytes() != rendered:
                stale.append(str(path))
            continue
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rendered)
        print(f"wrote {path.relative_to(PACKAGE_DIR.parent.parent)}")
    if stale:
        print("stale artifacts: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
