"""The import contracts: the floors of the house hold, and the checker does catch a breach."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.architecture.layers import violations

REPO = Path(__file__).resolve().parents[2]


def test_the_project_keeps_its_floors() -> None:
    assert violations(REPO) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in ("domain", "domain/model", "domain/app", "projections", "workers", "api", "node", "ops"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


CLEAN = {
    "domain/model/money.py": "import re\n",
    "domain/app/market.py": "from domain.model import money\n",
    "projections/search.py": "from domain.model.money import X\n",
    "api/app.py": "from projections.search import Y\nfrom domain.app.market import Z\n",
    "workers/jobs.py": "from domain.app import market\n",
    "node/cli.py": "from domain.model import money\n",
    "ops/bootstrap.py": "from api.app import A\nfrom workers.jobs import B\n",
    "ops/cli.py": "def main():\n    from ops.bootstrap import build\n",
}


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    assert violations(_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize(("path", "text", "expected"), [
    ("domain/model/bad.py", "from domain.app.market import Z\n", "domain.model may not import domain.app.market"),
    ("domain/model/bad.py", "import asyncio\n", "the pure model imports asyncio"),
    ("domain/model/bad.py", "import logging\n", "the pure model imports logging"),
    ("domain/model/bad.py", "from datetime import datetime\nx = datetime.now()\n", "reads the clock"),
    ("domain/model/bad.py", "import uuid\nx = uuid.uuid4()\n", "reads the clock or makes ids (uuid4)"),
    ("domain/app/bad.py", "from projections.search import Y\n", "domain.app may not import projections.search"),
    ("projections/bad.py", "from ops.bootstrap import build\n", "projections may not import ops.bootstrap"),
    ("projections/bad.py", "from api.app import A\n", "projections may not import api.app"),
    ("api/bad.py", "from workers.jobs import B\n", "api may not import workers.jobs"),
    ("workers/bad.py", "def f():\n    from ops.cli import main\n", "workers may not import ops.cli"),
    ("node/bad.py", "from domain.app.market import Z\n", "node may not import domain.app.market"),
    ("node/bad.py", "from projections.search import Y\n", "node may not import projections.search"),
    ("ops/adapters.py", "from ops.bootstrap import build\n", "only entry points import the composition root"),
    ("ops/bench/x.py", "from tests.stubs import stripe_stub\n", "production code imports the tests"),
    ("api/bad.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ops.bootstrap import R\n",
     "api may not import ops.bootstrap"),
])
def test_each_forbidden_import_is_caught(tmp_path: Path, path: str, text: str, expected: str) -> None:
    found = violations(_tree(tmp_path, {**CLEAN, path: text}))
    assert any(expected in line for line in found), found


def test_an_import_cycle_is_caught(tmp_path: Path) -> None:
    found = violations(_tree(tmp_path, {**CLEAN, "domain/app/a.py": "from domain.app import b\n",
                                        "domain/app/b.py": "from domain.app.a import X\n"}))
    assert "import cycle: domain.app.a -> domain.app.b" in found


def test_typing_only_imports_make_no_cycle(tmp_path: Path) -> None:
    found = violations(_tree(tmp_path, {**CLEAN, "domain/app/a.py": "from domain.app import b\n",
                                        "domain/app/b.py": "from typing import TYPE_CHECKING\n"
                                                           "if TYPE_CHECKING:\n    from domain.app.a import X\n"}))
    assert found == []
