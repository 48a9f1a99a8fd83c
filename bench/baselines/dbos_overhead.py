"""DBOS Transact per-step overhead; runs inside ``bench/.venv-dbos``.

The shapes are those of ``harness.dbos_workflows`` (``chain``: ONE workflow of N sequential
``@DBOS.step`` calls, every step's output recorded before the next starts, DBOS's unit of
durability; ``fanout``: ONE workflow starting N one-step child workflows, then a ``total``
step — N durable child workflows, not N bare steps). System database: SQLite, fresh per
process; every run gets a fresh workflow id. Timed: starting the workflow and getting its
result; ``DBOS.launch()`` is set-up. Protocol: ``harness.time_rounds``. Prints ONE JSON object
on stdout as the last line.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import harness


def main() -> None:
    args = harness.overhead_args()
    from dbos import DBOS, SetWorkflowID

    tmp = Path(tempfile.mkdtemp(prefix="dbos-bench-"))
    t0 = time.perf_counter()
    workflows = harness.dbos_workflows("exoflow-bench", tmp / "dbos.sqlite")
    DBOS.launch()
    launch_s = time.perf_counter() - t0
    logging.getLogger("dbos").setLevel(logging.WARNING)

    def run(shape: str, n: int) -> int:
        with SetWorkflowID(harness.unique(shape)):
            return workflows[shape](n)

    out = harness.time_rounds("dbos", run, {"chain": args.chain, "fanout": args.fanout}, args.repeats)
    out["meta"] = {"dbos": harness.dbos_version(), "python": sys.version.split()[0], "launch_s": launch_s,
                   "warmup_s": out.pop("warmup_s"), "system_database": "sqlite"}
    DBOS.destroy()
    shutil.rmtree(tmp, ignore_errors=True)
    harness.emit(out)


if __name__ == "__main__":
    main()
