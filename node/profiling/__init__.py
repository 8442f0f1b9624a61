"""Local profiling of datasets, models and pipelines (the node's embedded assistant).

Public interface, used by ``aim-node profile``:

* :func:`profile_path` — profile a CSV/Parquet/JSONL file or a folder of them.
* :func:`profile_manifest` — profile a model or pipeline manifest (JSON or TOML).
* :func:`render_text` — render either report for a terminal.
* :data:`PII_KINDS` — the stable PII kind strings used in reports.

Reports are JSON-serialisable dicts that never contain a raw cell value; see
docs/catalogue.md for the format.
"""

from node.profiling.dataset import REPORT_VERSION, profile_path
from node.profiling.manifest import profile_manifest
from node.profiling.pii_rules import KINDS as PII_KINDS
from node.profiling.render import render_text

__all__ = ["PII_KINDS", "REPORT_VERSION", "profile_manifest", "profile_path", "render_text"]
