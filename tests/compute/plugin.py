"""A safety plugin installed the way a package installs one: a ``*.dist-info`` with entry points."""

from __future__ import annotations

from pathlib import Path


def install(root: Path, **entry_points: str) -> Path:
    """Write ``aimarket_test_plugins-1.0.dist-info`` under ``root``; put ``root`` on the path to use it."""
    info = root / "aimarket_test_plugins-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: aimarket-test-plugins\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[aimarket.compute.safety]\n{lines}")
    return root
