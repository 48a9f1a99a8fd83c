"""Helpers every benchmark here shares: machine load, engine revision, aligned tables, JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS_DIR = BENCH / "results"

# ray.init() with no address JOINS the cluster named in /tmp/ray/ray_current_cluster when a
# `ray start` cluster runs on the machine (other sessions' multi-node tests do that), and so
# would the engine's own ray.init. A benchmark must own its cluster: "local" always starts a
# new one. Set here, before any ray.init, so every subprocess (baselines, crash/resume
# drivers) inherits it; an explicit RAY_ADDRESS from the user is kept.
os.environ.setdefault("RAY_ADDRESS", "local")


def wait_for_quiet(max_load: float | None, max_wait_s: float = 300.0) -> dict:
    """On a 2-core machine other sessions' tests move every figure: wait (bounded) until the
    1-minute load average is below ``max_load``; return what was seen, for the JSON."""
    started = time.monotonic()
    seen = os.getloadavg()[0]
    if max_load is not None:
        while seen >= max_load and time.monotonic() - started < max_wait_s:
            print(f"  load average {seen:.2f} >= {max_load}: waiting (at most {max_wait_s:.0f} s in all)", flush=True)
            time.sleep(20)
            seen = os.getloadavg()[0]
    return {"max_load": max_load, "waited_s": round(time.monotonic() - started, 1), "load_at_start": seen}


def engine_revision() -> str:
    """The commit measured (``-dirty``: with uncommitted edits), since the engine changes under us."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=BENCH, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem_gib, 1), "python": platform.python_version()}


def base_meta() -> dict:
    return {"revision": engine_revision(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "ray_address": os.environ.get("RAY_ADDRESS"), **machine()}


def aligned(head: tuple, body: list[tuple], left: int = 2) -> str:
    """One aligned text table; the first ``left`` columns left-aligned, figures right-aligned."""
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def fmt(line: tuple) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])


def save(name: str, payload: dict) -> Path:
    path = RESULTS_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
