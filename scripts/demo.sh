#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the crash-and-resume demo:
#   bash scripts/demo.sh [--out DIR] [--kill-after N]
# It kills its own workflow driver with kill -9 mid-run, resumes, checks exactly-once,
# prints a summary and writes the recovery graph (SVG) to DIR (default ./demo-output).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 demo/crash_resume.py "$@"
