#!/usr/bin/env bash
# Regenerate ops/requirements.lock: every runtime dependency of pyproject.toml plus the `test`
# extra, resolved for Python 3.11 on every platform (markers where they differ), exact versions
# with hashes. A version already in the lock is kept while it still fits pyproject.toml; to
# move on, pass uv's own flags: `bash ops/lock.sh --upgrade` (everything) or
# `bash ops/lock.sh --upgrade-package pytest` (one). tests/test_lock.py checks the result.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v uv >/dev/null 2>&1; then
  UV=(uv)
else
  python3 -m pip install --quiet --disable-pip-version-check "uv>=0.4"
  UV=(python3 -m uv)
fi

"${UV[@]}" pip compile pyproject.toml \
  --extra test \
  --python-version 3.11 \
  --universal \
  --generate-hashes \
  --custom-compile-command "bash ops/lock.sh" \
  --output-file ops/requirements.lock \
  --quiet \
  "$@"
