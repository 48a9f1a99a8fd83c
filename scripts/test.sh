#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Extra arguments go to pytest:
#   bash scripts/test.sh                  # everything but the slow soak tests
#   bash scripts/test.sh -x tests/test_x.py -k name
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] python3 -m pytest -q -m \"not slow\" $*"
rc=0
python3 -m pytest -q -m "not slow" "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "[test] error: pytest collected no tests (exit code 5) - that is a failure, not a pass" >&2
    exit 1
fi
exit "$rc"
