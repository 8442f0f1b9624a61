"""What the HTTP stack alone can do on this machine: a bare Falcon ``GET /healthz`` under
gunicorn with each worker class, timed with the debit benchmark's client.

    python3 ops/bench/http_ceiling.py [--workers 2 --seconds 6]

Compares gunicorn + Uvicorn worker + Falcon ASGI (what ``aimarket serve`` runs) with the
WSGI stacks it replaced: gunicorn + gevent (``pip install gevent``; skipped without it) and
gunicorn + gthread, Falcon WSGI. The apps have no middleware, auth or store: the figures
bound what any endpoint can reach.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ops.bench.debits import ceiling

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
VARIANTS = [("gevent + Falcon WSGI", "wsgi_app:app", ["-k", "gevent", "--worker-connections", "1000"]),
            ("gthread x32 + Falcon WSGI", "wsgi_app:app", ["-k", "gthread", "--threads", "32"]),
            ("uvicorn + Falcon ASGI", "asgi_app:app", ["-k", "uvicorn.workers.UvicornWorker"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--port", type=int, default=18711)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "wsgi_app.py").write_text(WSGI_APP)
        Path(tmp, "asgi_app.py").write_text(ASGI_APP)
        for name, target, options in VARIANTS:
            needs = "gevent" if "gevent" in name else "uvicorn" if "uvicorn" in name else None
            if needs and importlib.util.find_spec(needs) is None:
                print(json.dumps({"stack": name, "skipped": f"pip install {needs}"}))
                continue
            cmd = [sys.executable, "-m", "gunicorn", *options, "-w", str(args.workers), "-b",
                   f"127.0.0.1:{args.port}", target]
            proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for _ in range(100):
                    try:
                        if requests.get(f"http://127.0.0.1:{args.port}/healthz", timeout=1).ok:
                            break
                    except requests.RequestException:
                        time.sleep(0.1)
                result = asyncio.run(ceiling(args.port, 64, args.seconds))
                print(json.dumps({"stack": name, **result}), flush=True)
            finally:
                proc.terminate()
                proc.wait(15)
            args.port += 1


if __name__ == "__main__":
    main()
