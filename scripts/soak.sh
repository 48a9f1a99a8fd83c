#!/usr/bin/env bash
# Random crash trials on the reference workflow, checked for exactly-once after each resume.
#   bash scripts/soak.sh --minutes 30     # or --trials 200; --seed S replays a soak
# Prints one line per trial and "soak: T trials, F failures"; exits non-zero on any failure.
# Not part of the default test command (tests/soak.py is not a test module).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 tests/soak.py "$@"
