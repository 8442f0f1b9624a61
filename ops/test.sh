#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, make sure PostgreSQL and Redis answer on
# 127.0.0.1 (starting them if they are installed but down), then run pytest. No test is
# skipped for a missing service: if one cannot be reached this script stops with a message.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== install"
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
if [ -f ops/chain/package.json ]; then
  (cd ops/chain && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "== services"
bash ops/ci/services.sh

echo "== tests"
export AIMARKET_TEST_DATABASE_URL="${AIMARKET_TEST_DATABASE_URL:-postgresql://root@127.0.0.1:5432/test}"
export AIMARKET_TEST_REDIS_URL="${AIMARKET_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"
exec python3 -m pytest "$@"
