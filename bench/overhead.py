"""Per-task overhead of ExoFlow against plain Ray, measured side by side in one run.

Workloads (same shape for every system, so the ratios compare like with like):

* ``chain``: N dependent tasks, each takes the previous value and returns it + 1;
  the driver gets the last value.
* ``fanout``: N independent tasks, each returns a small int, then ONE gathering
  task that receives all N values as arguments (plain Ray: the N ObjectRefs;
  ExoFlow: ``total.bind(*nodes)``); the driver gets the gathering task's value.

Systems: plain Ray (``@ray.remote``), and ExoFlow with ``checkpoint="sync"``,
``"async"`` and ``False``. All share one Ray cluster (``ray.init`` once,
``num_cpus=2``). Every system and workload gets one warm-up run first (worker
start-up, function export and DuckDB warm-up would otherwise land in the first
sample). Then the repeats run round-robin (system after system) so that noise
from other processes on the machine hits every system alike; we report medians.

What is timed is what a user waits for: building the DAG and running it to its
value. For ExoFlow that is ``bind`` + ``exo.run`` (workflow creation, grouped
commits, final status). Opening a fresh store (``exo.init``) is set-up, like
``ray.init``, and is not timed; each ExoFlow run gets a fresh store directory
and a fresh ``workflow_id`` so no run can reuse another's checkpoints.

µs/task = median wall time / N (the gathering task is not counted in N).

    python bench/overhead.py                 # 200-chain, 1000-fan-out, 3 repeats
    python bench/overhead.py --quick         # small sizes, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import ray

import exoflow_kernel as exo

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
WORKLOADS = ("chain", "fanout")
MODES = {"exo-sync": "sync", "exo-async": "async", "exo-off": False}
SYSTEMS = ("ray", *MODES)
# Targets from the issue: the largest acceptable ratio ExoFlow / plain Ray.
TARGETS = {
    ("exo-sync", "fanout"): 1.3, ("exo-sync", "chain"): 1.5,
    ("exo-async", "fanout"): 1.2, ("exo-async", "chain"): 1.2,
    ("exo-off", "fanout"): 1.1, ("exo-off", "chain"): 1.1,
}


# -- the task bodies: the same plain functions for every system --------------------


def inc(x: int) -> int:
    return x + 1


def leaf(i: int) -> int:
    return i


def total(*xs: int) -> int:
    return sum(xs)


EXPECTED: dict[str, Callable[[int], int]] = {"chain": lambda n: n, "fanout": lambda n: n * (n - 1) // 2}


# -- the systems: each builds one workload of size n and returns its value ------------


class PlainRay:
    """The baseline: the same functions as bare Ray tasks."""

    name = "ray"

    def __init__(self) -> None:
        self.inc, self.leaf, self.total = (ray.remote(f) for f in (inc, leaf, total))

    def prepare(self) -> None:
        """Nothing to set up per run."""

    def chain(self, n: int) -> int:
        ref = 0
        for _ in range(n):
            ref = self.inc.remote(ref)
        return ray.get(ref)

    def fanout(self, n: int) -> int:
        return ray.get(self.total.remote(*[self.leaf.remote(i) for i in range(n)]))


class ExoFlow:
    """ExoFlow with one checkpoint mode for every task, a fresh store per run."""

    def __init__(self, name: str, tmp_root: Path) -> None:
        self.name = name
        mode = MODES[name]
        self.inc, self.leaf, self.total = (exo.task(f, checkpoint=mode) for f in (inc, leaf, total))
        self.tmp_root = tmp_root
        self.store: Path | None = None

    def prepare(self) -> None:
        """Switch to a fresh, empty store (and drop the previous one: disk stays small)."""
        old, self.store = self.store, Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.tmp_root))
        exo.init(self.store)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _run(self, node) -> int:
        return exo.run(node, workflow_id=f"{self.name}-{uuid.uuid4().hex[:12]}")

    def chain(self, n: int) -> int:
        node = 0
        for _ in range(n):
            node = self.inc.bind(node)
        return self._run(node)

    def fanout(self, n: int) -> int:
        return self._run(self.total.bind(*[self.leaf.bind(i) for i in range(n)]))


# -- measuring ----------------------------------------------------------------------------


def time_once(system, workload: str, n: int) -> float:
    """The one timing helper every system goes through: set-up untimed, then
    build + run to the value, timed; a wrong value fails loudly (a fast wrong
    answer is not a result)."""
    system.prepare()
    started = time.perf_counter()
    value = getattr(system, workload)(n)
    elapsed = time.perf_counter() - started
    if value != EXPECTED[workload](n):
        raise AssertionError(f"{system.name} {workload}({n}) returned {value!r}, expected {EXPECTED[workload](n)}")
    return elapsed


@dataclass
class Row:
    """Raw samples and derived figures for one (system, workload)."""

    system: str
    workload: str
    n: int
    seconds: list[float] = field(default_factory=list)
    us_per_task: float = 0.0
    spread_pct: float = 0.0  # (max - min) / median: how noisy the samples were
    ratio: float | None = None
    target: float | None = None
    passed: bool | None = None


def measure(systems: list, sizes: dict[str, int], repeats: int) -> list[Row]:
    """Warm every system up once, then run the repeats round-robin."""
    rows = {(s.name, w): Row(s.name, w, sizes[w]) for w in WORKLOADS for s in systems}
    for workload in WORKLOADS:
        for system in systems:
            time_once(system, workload, sizes[workload])
    for rep in range(repeats):
        for workload in WORKLOADS:
            for system in systems:
                rows[system.name, workload].seconds.append(time_once(system, workload, sizes[workload]))
        print(f"  repeat {rep + 1}/{repeats} done", flush=True)
    return summarize(list(rows.values()))


def summarize(rows: list[Row]) -> list[Row]:
    """Medians, per-task µs, and each ExoFlow mode's ratio to plain Ray."""
    for row in rows:
        median = statistics.median(row.seconds)
        row.us_per_task = median / row.n * 1e6
        row.spread_pct = (max(row.seconds) - min(row.seconds)) / median * 100
    base = {r.workload: r.us_per_task for r in rows if r.system == "ray"}
    for row in rows:
        row.ratio = row.us_per_task / base[row.workload]
        row.target = TARGETS.get((row.system, row.workload))
        row.passed = None if row.target is None else row.ratio <= row.target
    return rows


# -- reporting ----------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    """One aligned text table, workloads grouped."""
    head = ("system", "workload", "N", "µs/task", "spread", "ratio vs ray", "target", "result")
    body = [(r.system, r.workload, str(r.n), f"{r.us_per_task:.0f}", f"{r.spread_pct:.0f}%", f"{r.ratio:.2f}x",
             "-" if r.target is None else f"<= {r.target:.1f}x",
             "-" if r.passed is None else ("pass" if r.passed else "FAIL"))
            for r in sorted(rows, key=lambda r: (WORKLOADS.index(r.workload), SYSTEMS.index(r.system)))]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def fmt(line: tuple) -> str:  # names left-aligned, figures right-aligned
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])


def save(rows: list[Row], meta: dict) -> None:
    """Raw samples plus context, so a later reader can judge the noise."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in rows]}, indent=2) + "\n")


def engine_revision() -> str:
    """The commit measured (``-dirty``: with uncommitted engine edits), since the
    engine changes under this benchmark."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=RESULTS.parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chain", type=int, default=200, help="tasks in the dependent chain (default 200)")
    p.add_argument("--fanout", type=int, default=1000, help="independent tasks in the fan-out (default 1000)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per system and workload (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke run: chain 20, fan-out 100, 1 repeat")
    args = p.parse_args()
    if args.quick:
        args.chain, args.fanout, args.repeats = 20, 100, 1
    return args


def main() -> None:
    args = parse_args()
    sizes = {"chain": args.chain, "fanout": args.fanout}
    load_before = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="exoflow-bench-") as tmp:
        systems = [PlainRay(), *(ExoFlow(name, Path(tmp)) for name in MODES)]
        print(f"overhead: chain={sizes['chain']} fanout={sizes['fanout']} repeats={args.repeats} "
              f"(stores under {tmp})", flush=True)
        rows = measure(systems, sizes, args.repeats)
    meta = {
        "sizes": sizes, "repeats": args.repeats, "ray": ray.__version__, "exoflow": exo.__version__, "revision": engine_revision(),
        "python": platform.python_version(), "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    print()
    print(table(rows))
    print(f"\nload average before/after: {load_before[0]:.2f} / {meta['loadavg_after'][0]:.2f} "
          f"on {meta['cpus']} cores (high load or spread: numbers are noisy, run again)")
    save(rows, meta)
    print(f"raw figures: {RESULTS}")


if __name__ == "__main__":
    main()
