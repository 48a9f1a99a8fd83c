"""Ray Workflows (``ray==2.47.1``) crash + resume; runs inside ``bench/.venv-rayworkflows``.

Called twice by ``bench/recovery.py`` on the same storage directory, with the
``harness.rayworkflows_dag`` shapes (the same as ExoFlow's):

* ``--phase crash``: ``ray.init(storage=file://<dir>)``, then ``workflow.run``. The task with
  index ``--crash-index`` (90 %) kills the DRIVER with SIGKILL (``kill -9``; the local Ray
  cluster goes with it). Ray Workflows checkpoints each task's output before its dependents
  run, so what finished before that task is durable.
* ``--phase resume``: a fresh process: ``ray.init(storage=...)`` (timed apart), one trivial
  task (Ray is "up"), then ``workflow.resume(id)`` to the result (timed).
Every task execution is noted in ``harness.StepLog``, so the resume can count what ran
again. Prints ONE JSON object on stdout as the last line.
"""

from __future__ import annotations

import os
import time

import harness


def main() -> None:
    args = harness.recovery_args()
    harness.deep_recursion(args.tasks)
    t0 = time.perf_counter()
    import ray
    from ray import workflow
    t1 = time.perf_counter()
    ray_init_s = harness.rayworkflows_init(args.store / "ray")
    t2 = time.perf_counter()
    ray.get(ray.remote(lambda: 0).remote())
    t3 = time.perf_counter()
    crash = args.phase == "crash"
    log = harness.StepLog(args.store, args.phase, args.crash_index, os.getpid() if crash else None)
    if crash:
        workflow.run(harness.rayworkflows_dag(args.shape, args.tasks, log.note), workflow_id=harness.WORKFLOW)
        harness.emit({"crashed": False})
        return
    before = harness.StepLog.snapshot(args.store)
    t4 = time.perf_counter()
    value = workflow.resume(harness.WORKFLOW)
    t5 = time.perf_counter()
    if value != harness.expected(args.shape, args.tasks):
        raise AssertionError(f"resume of {args.shape}({args.tasks}) returned {value!r}, "
                             f"expected {harness.expected(args.shape, args.tasks)}")
    harness.emit({"import_s": t1 - t0, "ray_init_s": ray_init_s, "first_task_s": t3 - t2, "resume_s": t5 - t4,
                  **harness.StepLog.counts(args.store, before), "ray": ray.__version__})


if __name__ == "__main__":
    main()
