"""Ray Workflows (``ray==2.47.1``) crash + resume; runs inside ``bench/.venv-rayworkflows``.

Called twice by ``bench/recovery.py`` on the same storage directory:

* ``--phase crash``: ``ray.init(storage=file://<dir>)``, then ``workflow.run`` of the same
  shape as ExoFlow's (``chain``: N dependent ``inc`` tasks; ``fanout``: N ``leaf`` + one
  ``total``). The task with index ``--crash-index`` (90 %) kills the DRIVER with SIGKILL
  (``kill -9``; the local Ray cluster goes with it). Ray Workflows checkpoints each task's
  output before its dependents run, so what finished before that task is durable.
* ``--phase resume``: a fresh process: ``ray.init(storage=...)`` (timed apart), one trivial
  task (Ray is "up"), then ``workflow.resume(id)`` to the result (timed). Every task
  execution appends its index to ``<dir>/executed.<phase>`` (a few µs), so the resume phase
  can count what ran again. Prints ONE JSON object on stdout as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

WORKFLOW = "recovery-bench"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--phase", choices=("crash", "resume"), required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--shape", choices=("chain", "fanout"), required=True)
    p.add_argument("--tasks", type=int, required=True)
    p.add_argument("--crash-index", type=int, required=True)
    args = p.parse_args()
    store, n = Path(args.store), args.tasks
    # Ray's DAG scanner pickles the nested DAG recursively: a 1000-deep chain needs more than
    # Python's default recursion limit (the 200-chain of overhead.py does not).
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * n + 1000))
    log = store / f"executed.{args.phase}"

    t0 = time.perf_counter()
    import ray
    from ray import workflow
    t1 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, storage=f"file://{store / 'ray'}")
    t2 = time.perf_counter()
    ray.get(ray.remote(lambda: 0).remote())
    t3 = time.perf_counter()
    driver = os.getpid() if args.phase == "crash" else -1

    def note(i: int) -> None:
        with open(log, "a") as f:
            f.write(f"{i}\n")
        if i == args.crash_index and driver > 0:
            os.kill(driver, signal.SIGKILL)

    @ray.remote
    def inc(x: int) -> int:
        note(x)
        return x + 1

    @ray.remote
    def leaf(i: int) -> int:
        note(i)
        return i

    @ray.remote
    def total(*xs: int) -> int:
        return sum(xs)

    expected = n if args.shape == "chain" else n * (n - 1) // 2
    if args.phase == "crash":
        if args.shape == "chain":
            node = 0
            for _ in range(n):
                node = inc.bind(node)
        else:
            node = total.bind(*[leaf.bind(i) for i in range(n)])
        workflow.run(node, workflow_id=WORKFLOW)
        print(json.dumps({"crashed": False}))
        return
    t4 = time.perf_counter()
    value = workflow.resume(WORKFLOW)
    t5 = time.perf_counter()
    if value != expected:
        raise AssertionError(f"resume of {args.shape}({n}) returned {value!r}, expected {expected}")
    crash_log = store / "executed.crash"
    ran_before = len(set(crash_log.read_text().split())) if crash_log.exists() else 0
    reran = len(log.read_text().split()) if log.exists() else 0
    print(json.dumps({"import_s": t1 - t0, "ray_init_s": t2 - t1, "first_task_s": t3 - t2, "resume_s": t5 - t4,
                      "ran_before_crash": ran_before, "reexecuted": reran, "ray": ray.__version__}))


if __name__ == "__main__":
    main()
