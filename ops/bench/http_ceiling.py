"""What the HTTP stack alone can do on this machine: a bare Falcon ASGI ``GET /healthz``
(no middleware, auth or store) under gunicorn with the worker class ``aimarket serve`` uses
(``ops.serve.HubWorker``: Uvicorn, uvloop, httptools), timed with the debit bench's client.

    python3 ops/bench/http_ceiling.py --rounds 3 [--workers 2 --seconds 6] [--wsgi]

Measured: ``--workers`` gunicorn workers (default 2, the default of ``AIMARKET_WEB_WORKERS``).
Baseline: the same with ONE setting changed, gunicorn's ``workers`` = 1 (the debit bench's
shape). The two alternate over ``--rounds``; medians and their ratio are printed. Only 200
answers count; every answer is in the status breakdown. The figures bound what any endpoint
can reach.

``--wsgi`` adds, as references only (they differ from the measured stack in the worker class
AND the app interface, so no ratio is given), the WSGI stacks the hub once ran: gunicorn +
gevent (skipped without ``pip install gevent``) and gunicorn + gthread x32, Falcon WSGI.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ops.bench.common import (  # noqa: E402
    add_common_args,
    closed_loop,
    emit,
    health_request,
    loadavg,
    median,
    ratio,
    wait_for_quiet,
    wait_http_ok,
)

WSGI_APP = '''import falcon
class Health:
    def on_get(self, req, resp):
        resp.media = {"status": "ok"}
app = falcon.App()
app.add_route("/healthz", Health())
'''
ASGI_APP = '''import falcon.asgi
class Health:
    async def on_get(self, req, resp):
        resp.media = {"status": "ok"}
app = falcon.asgi.App()
app.add_route("/healthz", Health())
'''
HUB_STACK = ("asgi_app:app", ["-k", "ops.serve.HubWorker"])
WSGI_STACKS = [("reference: gevent + Falcon WSGI", "gevent", "wsgi_app:app",
                ["-k", "gevent", "--worker-connections", "1000"]),
               ("reference: gthread x32 + Falcon WSGI", None, "wsgi_app:app", ["-k", "gthread", "--threads", "32"])]


def measure(tmp: str, target: str, options: list[str], workers: int, port: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "gunicorn", *options, "-w", str(workers), "--keep-alive", "5",
           "-b", f"127.0.0.1:{port}", target]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc)
        result = asyncio.run(closed_loop(port, args.clients, args.seconds, health_request, 200))
    finally:
        proc.terminate()
        proc.wait(15)
    return {"workers": workers, **{k: result[k] for k in ("ok_per_s", "ok", "not_ok", "p50_ms", "p99_ms", "statuses")},
            "loadavg_after": loadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, services=False)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of the measured run")
    parser.add_argument("--baseline-workers", type=int, default=1, help="gunicorn workers of the baseline")
    parser.add_argument("--rounds", type=int, default=3, help="baseline/measured pairs, alternating order")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--port", type=int, default=18711)
    parser.add_argument("--wsgi", action="store_true", help="also time the WSGI stacks (references, no ratio)")
    args = parser.parse_args()
    quiet = wait_for_quiet(args.quiet_load, args.quiet_wait_s)
    emit({"bench": "http_ceiling", "cpus": os.cpu_count(), **quiet, "stack": "gunicorn + ops.serve.HubWorker "
          "+ Falcon ASGI", "setting": "gunicorn workers", "measured": args.workers, "baseline": args.baseline_workers})
    port = args.port
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "measured": []}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "wsgi_app.py").write_text(WSGI_APP)
        Path(tmp, "asgi_app.py").write_text(ASGI_APP)
        for n in range(1, args.rounds + 1):
            order = [("baseline", args.baseline_workers), ("measured", args.workers)]
            for label, workers in order if n % 2 else order[::-1]:
                record = {"round": n, "run": label, **measure(tmp, *HUB_STACK, workers, port, args)}
                emit(record)
                runs[label].append(record)
                port += 1
        if args.wsgi:
            for name, needs, target, options in WSGI_STACKS:
                if needs and importlib.util.find_spec(needs) is None:
                    emit({"stack": name, "skipped": f"pip install {needs}"})
                    continue
                emit({"stack": name, **measure(tmp, target, options, args.workers, port, args)})
                port += 1
    med = {label: {"median_ok_per_s": median([r["ok_per_s"] for r in rs]),
                   "median_p50_ms": median([r["p50_ms"] for r in rs if r["p50_ms"] is not None]),
                   "median_p99_ms": median([r["p99_ms"] for r in rs if r["p99_ms"] is not None])}
           for label, rs in runs.items()}
    emit({"summary": med, "measured_vs_baseline": ratio(med["measured"]["median_ok_per_s"],
                                                        med["baseline"]["median_ok_per_s"])})


if __name__ == "__main__":
    main()
