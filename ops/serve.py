"""Gunicorn, run from Python: ``aimarket serve``. The app is built in each worker after fork."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from ops.settings import Settings


class HubServer(BaseApplication):
    """Gunicorn (gevent or gthread workers); ``load`` runs in the worker (``preload_app`` is off)."""

    def __init__(self, settings: Settings, options: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.options = {
            "bind": settings.bind, "workers": settings.web_workers, "worker_class": settings.worker_class,
            "worker_connections": 1000,
            "threads": settings.web_threads, "preload_app": False, "accesslog": None, "keepalive": 5,
            "graceful_timeout": 10, "timeout": 60,
            **(options or {}),
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from api.app import create_app

        app = create_app(self.settings)
        if self.settings.worker_class == "gevent":
            # CPU-heavy calls that release the GIL (bcrypt, the embedding model) run on the
            # hub's OS thread pool so they do not stall this worker's event loop.
            import gevent

            pool = gevent.get_hub().threadpool
            app.runtime.market.run_blocking = lambda fn, *args: pool.apply(fn, args)
        if self.settings.run_projections_in_web:
            # Embedded default: every worker offers to run the projections; a file lock makes
            # exactly one of them active, and another takes over if that worker dies.
            app.runtime.start_projections()
        return app
