"""What the baseline scripts share. They run in their own venvs (``bench/.venv-*``), so this
module imports nothing of ours (no ``exoflow_kernel``, no ``bench/common.py``) and nothing
that one of the two venvs lacks at import time: DBOS and Ray are imported inside the
functions that need them.

* the command lines (``overhead_args`` / ``recovery_args``) that ``bench/overhead.py`` and
  ``bench/recovery.py`` call the scripts with;
* the shapes: ``chain`` (n x ``inc`` from 0) and ``fanout`` (``total`` of n ``leaf``), their
  expected values, the same task bodies as ``bench/workloads.py``;
* the timing protocol of ``overhead.py`` (one warm-up per workload, then the repeats
  round-robin; a wrong value fails loudly);
* the step log recovery uses to count what ran before the crash and what ran again;
* each system's set-up: ``dbos_workflows`` (steps + workflows registered with DBOS) and
  ``rayworkflows_dag`` (the ``.bind`` DAG of Ray remote functions).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

WORKFLOW = "recovery-bench"  # the workflow id of every recovery trial


def expected(shape: str, n: int) -> int:
    return n if shape == "chain" else n * (n - 1) // 2


# -- command lines --------------------------------------------------------------------------


def overhead_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--chain", type=int, required=True)
    p.add_argument("--fanout", type=int, required=True)
    p.add_argument("--repeats", type=int, required=True)
    return p.parse_args()


def recovery_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--phase", choices=("crash", "resume"), required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--shape", choices=("chain", "fanout"), required=True)
    p.add_argument("--tasks", type=int, required=True)
    p.add_argument("--crash-index", type=int, required=True)
    args = p.parse_args()
    args.store = Path(args.store)
    return args


# -- overhead: the timing protocol ----------------------------------------------------------


def time_rounds(system: str, run: Callable[[str, int], int], sizes: dict[str, int], repeats: int) -> dict:
    """One warm-up per workload, then ``repeats`` timed rounds (workload after workload);
    ``run(shape, n)`` returns the workflow's value. Returns ``{shape: [seconds...],
    "warmup_s": {...}}``."""
    def once(shape: str) -> float:
        started = time.perf_counter()
        value = run(shape, sizes[shape])
        elapsed = time.perf_counter() - started
        if value != expected(shape, sizes[shape]):
            raise AssertionError(f"{system} {shape}({sizes[shape]}) returned {value!r}, "
                                 f"expected {expected(shape, sizes[shape])}")
        return elapsed

    out: dict = {shape: [] for shape in sizes}
    out["warmup_s"] = {shape: once(shape) for shape in sizes}
    for _ in range(repeats):
        for shape in sizes:
            out[shape].append(once(shape))
    return out


def emit(payload: dict) -> None:
    """The scripts' only output the parent reads: ONE JSON object, the last line of stdout."""
    print(json.dumps(payload))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- recovery: which steps ran when ---------------------------------------------------------


class StepLog:
    """Every task/step execution appends its index to ``<store>/executed.<phase>`` (a few µs);
    in the crash phase the step at ``crash_index`` then kills ``victim`` (the driver) with
    SIGKILL — once: a marker file made with O_EXCL guards the kill, because Ray Workflows
    stores the task functions (this object included) and runs them again on resume, when that
    pid is dead and may belong to someone else."""

    def __init__(self, store: Path, phase: str, crash_index: int, victim: int | None) -> None:
        self.path = str(store / f"executed.{phase}")
        self.marker = str(store / "crash.done")
        self.crash_index, self.victim = crash_index, victim

    def note(self, i: int) -> None:
        with open(self.path, "a") as f:
            f.write(f"{i}\n")
        if self.victim is not None and i == self.crash_index:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os.kill(self.victim, signal.SIGKILL)

    @staticmethod
    def _lines(path: Path) -> list[str]:
        return path.read_text().split() if path.exists() else []

    @classmethod
    def snapshot(cls, store: Path) -> dict:
        """Before the resume: what the crash run had executed."""
        crash = cls._lines(store / "executed.crash")
        return {"ran_before_crash": len(set(crash)), "lines": len(crash)}

    @classmethod
    def counts(cls, store: Path, before: dict) -> dict:
        """After the resume: ``ran_before_crash`` (distinct steps the crash run executed) and
        ``reexecuted`` (executions since, in either log: stored functions write to the
        crash run's)."""
        again = len(cls._lines(store / "executed.crash")) - before["lines"] + len(cls._lines(store / "executed.resume"))
        return {"ran_before_crash": before["ran_before_crash"], "reexecuted": again}


def deep_recursion(n: int) -> None:
    """Ray's DAG scanner pickles a nested DAG recursively: an n-deep chain needs more than
    Python's default recursion limit of 1000 (the 200-chain of overhead.py does not)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * n + 1000))


# -- DBOS --------------------------------------------------------------------------------------


def dbos_workflows(app: str, database: Path, note: Callable[[int], None] | None = None) -> dict:
    """Configure DBOS on a SQLite system database and register the two shapes, written the
    way a DBOS user would (DBOS has no task graph): ``chain`` = ONE workflow of n sequential
    ``@DBOS.step`` calls; ``fanout`` = ONE workflow starting n one-step child workflows with
    ``DBOS.start_workflow``, waiting for all, then one ``total`` step. ``note(i)`` (if given)
    runs inside every ``inc`` / ``leaf`` step. Returns ``{"chain": wf, "fanout": wf}``;
    call ``DBOS.launch()`` next."""
    from dbos import DBOS

    DBOS(config={"name": app, "system_database_url": f"sqlite:///{database}", "log_level": "WARNING"})
    mark = note or (lambda i: None)

    @DBOS.step()
    def inc(x: int) -> int:
        mark(x)
        return x + 1

    @DBOS.step()
    def leaf(i: int) -> int:
        mark(i)
        return i

    @DBOS.step()
    def total(xs: list[int]) -> int:
        return sum(xs)

    @DBOS.workflow()
    def chain_wf(n: int) -> int:
        x = 0
        for _ in range(n):
            x = inc(x)
        return x

    @DBOS.workflow()
    def child_wf(i: int) -> int:
        return leaf(i)

    @DBOS.workflow()
    def fanout_wf(n: int) -> int:
        handles = [DBOS.start_workflow(child_wf, i) for i in range(n)]
        return total([h.get_result() for h in handles])

    return {"chain": chain_wf, "fanout": fanout_wf}


def dbos_version() -> str | None:
    import importlib.metadata
    try:
        return importlib.metadata.version("dbos")
    except importlib.metadata.PackageNotFoundError:
        return None


# -- Ray Workflows -----------------------------------------------------------------------------


def rayworkflows_init(storage: Path) -> float:
    """``ray.init`` with workflow storage (2 CPUs, no dashboard); returns its seconds."""
    import ray
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, storage=f"file://{storage}")
    return time.perf_counter() - started


def rayworkflows_dag(shape: str, n: int, note: Callable[[int], None] | None = None):
    """The same DAG as ExoFlow's, built with ``.bind`` on Ray remote functions; ``note(i)``
    (if given) runs inside every ``inc`` / ``leaf`` task."""
    import ray
    mark = note or (lambda i: None)

    @ray.remote
    def inc(x: int) -> int:
        mark(x)
        return x + 1

    @ray.remote
    def leaf(i: int) -> int:
        mark(i)
        return i

    @ray.remote
    def total(*xs: int) -> int:
        return sum(xs)

    if shape == "chain":
        node = 0
        for _ in range(n):
            node = inc.bind(node)
        return node
    return total.bind(*[leaf.bind(i) for i in range(n)])
