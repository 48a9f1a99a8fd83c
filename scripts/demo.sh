#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the crash-and-resume demo, headless:
#   bash scripts/demo.sh [--out DIR] [--rows N] [--kill-after K]
# It runs notebooks/etl_duckdb.ipynb in a real Jupyter kernel, kills that kernel (and its Ray)
# with kill -9 in the middle of the long load cell, resumes with %exoflow resume in a fresh
# kernel, checks exactly-once by counting real rows and executions, prints a summary and writes
# the recovery graph (SVG) and the executed notebook (HTML, ipynb) to DIR (default ./demo-output).
# It exits non-zero if a check fails.
#
#   bash scripts/demo.sh --engine [--out DIR] [--kill-after N]
# runs the engine-level demo instead (demo/crash_resume.py: a plain Python driver, no notebook).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--engine" ]; then
    shift
    exec python3 demo/crash_resume.py "$@"
fi
exec python3 demo/etl_notebook.py "$@"
