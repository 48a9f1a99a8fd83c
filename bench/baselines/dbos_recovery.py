"""DBOS Transact crash + resume; runs inside ``bench/.venv-dbos``.

Called twice by ``bench/recovery.py`` on the same directory (SQLite system database), with
the shapes of ``harness.dbos_workflows``:

* ``--phase crash``: the step with index ``--crash-index`` (90 %) kills the process with
  SIGKILL (DBOS runs steps in the application process: this IS the driver's ``kill -9``).
* ``--phase resume``: a fresh process: ``DBOS(config)`` + ``DBOS.launch()``, which recovers
  the pending workflows of this executor in the background; timed from ``launch()`` to the
  workflow's result (``retrieve_workflow(id).get_result(polling_interval_sec=0.01)``: our
  wait polls every 10 ms, so the figure is DBOS's recovery, not our polling).
Every step execution is noted in ``harness.StepLog``, to count what ran again. Prints ONE
JSON object on stdout as the last line.
"""

from __future__ import annotations

import os
import time

import harness


def main() -> None:
    args = harness.recovery_args()
    crash = args.phase == "crash"
    t0 = time.perf_counter()
    from dbos import DBOS, SetWorkflowID
    t1 = time.perf_counter()
    log = harness.StepLog(args.store, args.phase, args.crash_index, os.getpid() if crash else None)
    workflows = harness.dbos_workflows("exoflow-bench-recovery", args.store / "dbos.sqlite", log.note)
    if crash:
        DBOS.launch()
        with SetWorkflowID(harness.WORKFLOW):
            workflows[args.shape](args.tasks)
        harness.emit({"crashed": False})
        return
    before = harness.StepLog.snapshot(args.store)
    t2 = time.perf_counter()
    DBOS.launch()
    t3 = time.perf_counter()
    value = DBOS.retrieve_workflow(harness.WORKFLOW).get_result(polling_interval_sec=0.01)
    t4 = time.perf_counter()
    if value != harness.expected(args.shape, args.tasks):
        raise AssertionError(f"resume of {args.shape}({args.tasks}) returned {value!r}, "
                             f"expected {harness.expected(args.shape, args.tasks)}")
    DBOS.destroy()
    harness.emit({"import_s": t1 - t0, "config_s": t2 - t1, "launch_s": t3 - t2, "resume_s": t4 - t2,
                  **harness.StepLog.counts(args.store, before)})


if __name__ == "__main__":
    main()
