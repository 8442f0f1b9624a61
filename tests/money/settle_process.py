"""One settlement as a real process, for crash tests: ``python -m tests.money.settle_process
CHANNEL_ID [--pause-after STAGE]``. With a stage ("recorded": before the broadcast, or
"submitted") it prints ``paused:STAGE`` there and blocks until the test SIGKILLs it. The
pause is injected here, in the tests: production code only offers the ``pause`` parameter."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ops.bootstrap import build_runtime
from ops.settings import load_settings
from workers.settlement import settle_channel


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("channel_id")
    parser.add_argument("--pause-after", default="")
    args = parser.parse_args()

    def pause(stage: str) -> None:
        if stage == args.pause_after:
            print(f"paused:{stage}", flush=True)
            while True:
                time.sleep(3600)

    runtime = build_runtime(load_settings())
    try:
        status = settle_channel(runtime, args.channel_id, pause=pause)
        print(json.dumps(runtime.market.settlement.settlement(args.channel_id).to_public()), flush=True)
    finally:
        runtime.close()
    return 0 if status == "confirmed" else 1


if __name__ == "__main__":
    sys.exit(main())
