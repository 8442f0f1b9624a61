"""One settlement as a real process, for crash and race tests: ``python -m
tests.money.settle_process CHANNEL_ID [--pause-after STAGE] [--jitter SEED] [--no-lease]``.

Prints ``started`` once its runtime is built and ``stage:STAGE`` at every stage; with
``--pause-after STAGE`` ("signing", "recorded": before the broadcast, or "submitted") it
prints ``paused:STAGE`` there and blocks until the test SIGKILLs it. ``--jitter`` sleeps a random
0-300 ms at every stage, so kills at random moments land between any two steps.
``--no-lease`` runs without the settlement lease (two of these then really act at once:
the race tests use it to exercise the rules that hold without the lease). The pauses and
the lease switch are injected here, in the tests: production code only offers parameters.

Prints the settlement as JSON on the last line; exits 0 when confirmed, 3 when the chain or
the lease was unavailable (a transient outcome a retry resumes from), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from domain.model.errors import Unavailable
from ops.bootstrap import build_runtime
from ops.settings import load_settings
from workers.settlement import settle_channel


class NoLease:
    """A lease that never excludes anyone."""

    @contextmanager
    def hold(self, name: str, wait_s: float) -> Iterator[None]:
        yield


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("channel_id")
    parser.add_argument("--pause-after", default="")
    parser.add_argument("--jitter", type=int, default=None)
    parser.add_argument("--no-lease", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.jitter)

    def pause(stage: str) -> None:
        print(f"stage:{stage}", flush=True)
        if args.jitter is not None:
            time.sleep(rng.uniform(0, 0.3))
        if stage == args.pause_after:
            print(f"paused:{stage}", flush=True)
            while True:
                time.sleep(3600)

    runtime = build_runtime(load_settings())
    print("started", flush=True)
    try:
        try:
            status = settle_channel(runtime, args.channel_id, pause=pause, lease=NoLease() if args.no_lease else None)
        except Unavailable as exc:
            print(json.dumps({"unavailable": str(exc)}), flush=True)
            return 3
        except Exception as exc:  # reported to the race test, which fails on it
            print(json.dumps({"error": repr(exc)[:2000]}), flush=True)
            raise
        print(json.dumps(runtime.market.settlement.settlement(args.channel_id).to_public()), flush=True)
    finally:
        runtime.close()
    return 0 if status == "confirmed" else 1


if __name__ == "__main__":
    sys.exit(main())
