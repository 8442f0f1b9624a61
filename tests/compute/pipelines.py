"""Pipelines the compute tests register: ones that fail, hang, stream a large output, count rows."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def fail(value: Any) -> Any:
    raise ValueError("this pipeline always fails")


def sleep(value: dict[str, Any]) -> dict[str, Any]:
    """Write the worker's pid to ``value["pid_file"]`` (if given), sleep ``value["s"]``, answer."""
    if value.get("pid_file"):
        Path(value["pid_file"]).write_text(str(os.getpid()))
    time.sleep(float(value.get("s", 0)))
    return {"slept": value.get("s", 0)}


def big(value: dict[str, Any]) -> dict[str, Any]:
    size = int(value["bytes"])
    return {"data": "".join(chr(97 + i % 26) for i in range(26)) * (size // 26) + "z" * (size % 26)}


def rows(value: dict[str, Any]) -> dict[str, Any]:
    return {"rows": [{"i": i} for i in range(int(value["n"]))]}


def wrong_output(value: Any) -> Any:
    return {"not": "what the schema says"}


def no_secrets(request: Any) -> str | None:
    """A safety plugin (entry point ``aimarket.compute.safety``): refuse inputs that mention a secret."""
    return "the input mentions a secret" if b"secret" in request.input_bytes else None


def exploding_plugin(request: Any) -> None:
    raise RuntimeError("the plugin broke")


def environment(value: Any) -> dict[str, Any]:
    return {"passphrase_visible": "AIM_NODE_PASSPHRASE" in os.environ}
