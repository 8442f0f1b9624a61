"""Gunicorn, run from Python: ``aimarket serve``. The app is built in each worker after fork.

Prometheus' multiprocess mode is prepared here, in the master, before any worker forks
(``prepare_metrics_dir``): each worker writes its request latency histogram to files in
``PROMETHEUS_MULTIPROC_DIR`` and a scrape, whichever worker takes it, sums them
(``api.resources.metrics``); the master's ``child_exit`` hook marks a dead worker's files
(``mark_process_dead``: it runs in the master, so it covers the Uvicorn workers too).
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, ClassVar

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from ops.settings import Settings


class HubWorker(UvicornWorker):
    """Gunicorn's Uvicorn worker: one event loop per process (uvloop and httptools when
    installed). No proxy-header rewriting (nothing sits in front of us that we trust) and no
    access log (the app writes one canonical line per request). The HTTP protocol is httptools'
    with the hub's size limits and problem+json refusals (``ops.http_protocol``)."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "auto", "http": "ops.http_protocol:HubHttpProtocol",
                                               "proxy_headers": False, "access_log": False}


def prepare_metrics_dir(explicit: str | None = None) -> str:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for the workers to come and empty it (a previous run's
    files would add to this run's counts). An operator's folder (the variable already set) is
    emptied and kept; otherwise a fresh temporary folder, removed when the master exits."""
    folder = explicit or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for child in path.iterdir():
            if child.is_file() and child.suffix == ".db":
                child.unlink()
    else:
        folder = tempfile.mkdtemp(prefix="aimarket-prometheus-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported already (by the CLI): values made from now on go to files
        values.ValueClass = values.get_value_class()
    return folder


def child_exit(server: Any, worker: Any) -> None:
    """Gunicorn hook (master): a worker ended; its live gauges go, its counters stay summed."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


class HubServer(BaseApplication):
    """Gunicorn with ``HubWorker``s; ``load`` runs in the worker (``preload_app`` is off)."""

    def __init__(self, settings: Settings, options: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.options = {
            "bind": settings.bind, "workers": settings.web_workers, "worker_class": "ops.serve.HubWorker",
            "preload_app": False, "accesslog": None, "keepalive": 5, "graceful_timeout": 10, "timeout": 60,
            "child_exit": child_exit, "on_exit": self._on_exit, **(options or {}),
        }
        explicit = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.metrics_dir = prepare_metrics_dir()
        self._own_metrics_dir = not explicit
        super().__init__()

    def _on_exit(self, server: Any) -> None:
        if self._own_metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from api.app import create_app
        from api.logging import configure
        from ops.bootstrap import build_runtime

        configure(self.settings.log_format)
        app = create_app(build_runtime(self.settings))
        if self.settings.run_projections_in_web:
            # Embedded default: every worker offers to run the projections; a file lock makes
            # exactly one of them active, and another takes over if that worker dies.
            app.runtime.start_projections()
            # ... and signs the audit tree's heads as they fall due (the heads table lock makes
            # one signer win when several workers find a head due: docs/audit.md).
            from ops.audit_trail_cli import start_head_signer

            start_head_signer(app.runtime, threading.Event())  # a daemon thread: ends with the worker
        tune_gc()
        return app


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path of a long-lived server.

    What the app built at start (modules, schemas, caches) is frozen out of collection, and
    young collections run every 50,000 allocations instead of 700: with the defaults, full
    collections over the growing channel cache stalled the loop for tens of milliseconds
    (debit benchmark, one worker: p99 80 ms -> 22 ms, 3,900 -> 4,600 debits/s). Reference
    counting still frees everything acyclic at once; cycles wait a little longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
