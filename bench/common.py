"""Helpers every benchmark here shares: machine load, engine revision, flags, the one table
printer, the JSON results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# Where the JSON (and plots) go: bench/results, or $BENCH_RESULTS (``make bench-quick`` uses
# bench/results/quick, so a smoke run never overwrites the figures README quotes).
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS") or BENCH / "results").resolve()

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


def ray_up(attempts: int = 4) -> None:
    """``ray.init`` for a benchmark (2 CPUs, no dashboard), tried again when the node start times
    out — Ray waits 30 s for its raylet, which a loaded 2-core machine can miss. The processes a
    failed attempt left (our own children) are killed by pid before the next one."""
    import psutil
    import ray
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            return
        except Exception as exc:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            print(f"  ray.init timed out (attempt {attempt}/{attempts}, load {os.getloadavg()[0]:.1f}); again", flush=True)
            ray.shutdown()
            for proc in psutil.Process().children(recursive=True):
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            time.sleep(10)


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


def add_load_flags(p: argparse.ArgumentParser) -> None:
    """``--max-load`` / ``--max-wait``: every script can wait (bounded) for a quiet machine."""
    p.add_argument("--max-load", type=float, default=None,
                   help="wait until the 1-min load average is below this before measuring (bounded by --max-wait)")
    p.add_argument("--max-wait", type=float, default=300, help="longest wait for --max-load, s (default 300)")


def start(args: argparse.Namespace) -> dict:
    """Wait for quiet if asked; the load seen before measuring, for the script's JSON meta."""
    quiet = wait_for_quiet(args.max_load, args.max_wait)
    return {**base_meta(), "quiet": quiet, "loadavg_before": os.getloadavg()}


def target(id: str, workload: str, measure: str, figure: str, bound: str, passed: bool | None) -> dict:
    """One of the issue's targets as a script measured it; ``report.py`` gathers them from every
    ``results/*.json`` (key ``targets``) into one table. ``id`` names the target across runs
    (``report.py`` lists the ids the issue asks for, to show what was not measured)."""
    return {"id": id, "workload": workload, "measure": measure, "figure": figure, "target": bound, "passed": passed}


def publish(name: str, table: str, meta: dict, results: list, targets: list[dict] | None = None) -> Path:
    """The one way a script ends: its table, the load it ran under, its raw figures (and the
    targets it checked, for ``report.py``) saved."""
    meta["loadavg_after"] = os.getloadavg()
    print()
    print(table)
    print(f"\nload average before/after: {meta['loadavg_before'][0]:.2f} / {meta['loadavg_after'][0]:.2f} "
          f"on {meta['cpus']} cores (high load or spread: numbers are noisy, run again)")
    path = save(name, {"meta": meta, "targets": targets or [], "results": results})
    print(f"raw figures: {path}")
    return path


def spread_pct(samples: list[float]) -> float | None:
    """(max - min) / median, in %: how noisy the samples were (None for one sample)."""
    import statistics
    if len(samples) < 2:
        return None
    return (max(samples) - min(samples)) / statistics.median(samples) * 100


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("pass" if passed else "MISS")
