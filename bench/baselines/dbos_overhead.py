"""DBOS Transact per-step overhead; runs inside ``bench/.venv-dbos``.

DBOS has no task graph, so the two shapes are written the way a DBOS user would:

* ``chain``: ONE workflow that calls N ``@DBOS.step`` functions in sequence, each taking
  the previous value and returning it + 1 (every step's output is recorded in the system
  database before the next starts: DBOS's unit of durability).
* ``fanout``: ONE parent workflow that starts N child workflows with
  ``DBOS.start_workflow`` (each child runs one ``leaf`` step), waits for all N handles,
  then runs one ``total`` step on the N values. A child workflow is DBOS's way to run work
  concurrently; each costs a workflow record plus a step record, so this is N durable
  child workflows, not N bare steps.

System database: SQLite (``system_database_url="sqlite:///<tmp>/dbos.sqlite"``), fresh per
process; every run gets a fresh workflow id. Timed: starting the workflow and getting its
result; ``DBOS.launch()`` is set-up, not timed. One warm-up per workload, then the repeats
round-robin. Prints ONE JSON object on stdout as the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import uuid


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--chain", type=int, required=True)
    p.add_argument("--fanout", type=int, required=True)
    p.add_argument("--repeats", type=int, required=True)
    args = p.parse_args()

    from dbos import DBOS, DBOSConfig, SetWorkflowID
    import dbos as dbos_pkg

    tmp = tempfile.mkdtemp(prefix="dbos-bench-")
    config: DBOSConfig = {"name": "exoflow-bench", "system_database_url": f"sqlite:///{tmp}/dbos.sqlite",
                          "log_level": "WARNING"}
    t0 = time.perf_counter()
    DBOS(config=config)

    @DBOS.step()
    def inc(x: int) -> int:
        return x + 1

    @DBOS.step()
    def leaf(i: int) -> int:
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

    DBOS.launch()
    launch_s = time.perf_counter() - t0
    logging.getLogger("dbos").setLevel(logging.WARNING)

    def run(wf, n: int) -> int:
        with SetWorkflowID(f"{wf.__name__}-{uuid.uuid4().hex[:12]}"):
            return wf(n)

    workloads = {"chain": (chain_wf, args.chain, lambda n: n),
                 "fanout": (fanout_wf, args.fanout, lambda n: n * (n - 1) // 2)}

    def time_once(name: str) -> float:
        wf, n, expected = workloads[name]
        started = time.perf_counter()
        value = run(wf, n)
        elapsed = time.perf_counter() - started
        if value != expected(n):
            raise AssertionError(f"dbos {name}({n}) returned {value!r}, expected {expected(n)}")
        return elapsed

    out: dict = {name: [] for name in workloads}
    warmup = {name: time_once(name) for name in workloads}
    for _ in range(args.repeats):
        for name in workloads:
            out[name].append(time_once(name))
    out["meta"] = {"dbos": getattr(dbos_pkg, "__version__", None) or _version("dbos"), "python": sys.version.split()[0],
                   "launch_s": launch_s, "warmup_s": warmup, "system_database": "sqlite"}
    DBOS.destroy()
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


def _version(pkg: str) -> str:
    import importlib.metadata
    return importlib.metadata.version(pkg)


if __name__ == "__main__":
    main()
