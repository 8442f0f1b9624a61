"""The buyer's key file and the fetch progress bar."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from domain.model.delivery import jwk_thumbprint
from domain.model.errors import InvalidInput
from node.cli import main
from node.delivery.commands import ProgressBar
from node.delivery.keys import load_buyer_key


def test_purchase_key_makes_a_private_jwk_and_prints_its_thumbprint(tmp_path: Path, capsys) -> None:
    assert main(["--home", str(tmp_path), "purchase-key", "--out", str(tmp_path / "k.jwk")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (os.stat(tmp_path / "k.jwk").st_mode & 0o777) == 0o600
    key = load_buyer_key(tmp_path / "k.jwk")
    assert printed["jkt"] == jwk_thumbprint(key.verify_key)
    os.chmod(tmp_path / "k.jwk", 0o644)
    with pytest.raises(InvalidInput):
        load_buyer_key(tmp_path / "k.jwk")


def test_the_progress_bar_draws_one_line() -> None:
    out = io.StringIO()
    bar = ProgressBar(out)
    bar(1 << 20, 4 << 20)
    bar.close()
    assert "25.0%" in out.getvalue() and "1.0/4.0 MiB verified" in out.getvalue()
