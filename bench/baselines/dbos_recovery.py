"""DBOS Transact crash + resume; runs inside ``bench/.venv-dbos``.

Called twice by ``bench/recovery.py`` on the same directory (SQLite system database):

* ``--phase crash``: ``chain`` = one workflow of N sequential steps; ``fanout`` = one parent
  workflow starting N one-step child workflows, then a ``total`` step (the shapes of
  ``dbos_overhead.py``). The step with index ``--crash-index`` (90 %) kills the process with
  SIGKILL (DBOS runs steps in the application process: this IS the driver's ``kill -9``).
* ``--phase resume``: a fresh process: ``DBOS(config)`` + ``DBOS.launch()``, which recovers
  the pending workflows of this executor in the background; timed from ``launch()`` to the
  workflow's result (``retrieve_workflow(id).get_result(polling_interval_sec=0.01)``: our
  wait polls every 10 ms, so the figure is DBOS's recovery, not our polling). Every step
  execution appends its index to ``<dir>/executed.<phase>``, to count what ran again.
Prints ONE JSON object on stdout as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
    log = store / f"executed.{args.phase}"

    t0 = time.perf_counter()
    from dbos import DBOS, DBOSConfig, SetWorkflowID
    import dbos as dbos_pkg  # noqa: F401
    t1 = time.perf_counter()
    config: DBOSConfig = {"name": "exoflow-bench-recovery", "system_database_url": f"sqlite:///{store}/dbos.sqlite",
                          "log_level": "WARNING"}
    DBOS(config=config)
    crash = args.phase == "crash"

    def note(i: int) -> None:
        with open(log, "a") as f:
            f.write(f"{i}\n")
        if crash and i == args.crash_index:
            os.kill(os.getpid(), signal.SIGKILL)

    @DBOS.step()
    def inc(x: int) -> int:
        note(x)
        return x + 1

    @DBOS.step()
    def leaf(i: int) -> int:
        note(i)
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

    expected = n if args.shape == "chain" else n * (n - 1) // 2
    wf = chain_wf if args.shape == "chain" else fanout_wf
    if crash:
        DBOS.launch()
        with SetWorkflowID(WORKFLOW):
            wf(n)
        print(json.dumps({"crashed": False}))
        return
    t2 = time.perf_counter()
    DBOS.launch()
    t3 = time.perf_counter()
    value = DBOS.retrieve_workflow(WORKFLOW).get_result(polling_interval_sec=0.01)
    t4 = time.perf_counter()
    if value != expected:
        raise AssertionError(f"resume of {args.shape}({n}) returned {value!r}, expected {expected}")
    crash_log = store / "executed.crash"
    ran_before = len(set(crash_log.read_text().split())) if crash_log.exists() else 0
    reran = len(log.read_text().split()) if log.exists() else 0
    DBOS.destroy()
    print(json.dumps({"import_s": t1 - t0, "config_s": t2 - t1, "launch_s": t3 - t2, "resume_s": t4 - t2,
                      "ran_before_crash": ran_before, "reexecuted": reran}))


if __name__ == "__main__":
    main()
