"""Soak: settlement workers racing on one channel with random SIGKILLs, many runs, by hand.

    python -m ops.bench.settlement_race --runs 20 [--seed 7]

Each run (``tests/money/settle_race.py``: real ``hardhat node``, PostgreSQL, worker
processes) closes a fresh channel, races two or three workers on it (alternately with and
without the settlement lease), SIGKILLs each at a random moment or not, lets one more
worker finish, and checks exactly one ``ChannelSettled`` log and the ledger equal to the
chain. It runs the suite's own test with more runs (``AIMARKET_SETTLE_SOAK_RUNS``) against
the test services (``AIMARKET_TEST_DATABASE_URL``, default the loopback ``test`` database),
so the soak and the suite cannot drift apart; results go to stdout as JSON. The suite runs
two races; record soak results in docs/payments.md ("Tests and soak").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "soak.json"
        env = {**os.environ, "AIMARKET_SETTLE_SOAK_RUNS": str(args.runs), "AIMARKET_SETTLE_SOAK_SEED": str(args.seed),
               "AIMARKET_SETTLE_SOAK_REPORT": str(report)}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                               "tests/money/test_settlement_soak.py", "-k", "racing"], cwd=REPO, env=env,
                              capture_output=True, text=True, check=False)
        results = json.loads(report.read_text()) if report.exists() else []
    summary = {"runs": args.runs, "passed": done.returncode == 0 and len(results) == args.runs, "seed": args.seed,
               "workers": dict(Counter(r["workers"] for r in results)),
               "without_lease": sum(r["no_lease"] for r in results),
               "killed": sum(r["killed"] for r in results),
               "killed_at": dict(Counter(stage for r in results for stage in r["killed_at"])),
               "finishers": sum(r["finishers"] for r in results),
               "seconds_per_run": round(sum(r["seconds"] for r in results) / max(len(results), 1), 1),
               "results": results}
    print(json.dumps(summary, indent=2))
    if done.returncode != 0:  # pytest's report, without the hub's JSON log lines
        report_lines = [line for line in done.stdout.splitlines() if not line.startswith('{"')]
        print("\n".join(report_lines)[-8000:], file=sys.stderr)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
