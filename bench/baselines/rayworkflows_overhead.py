"""Ray Workflows (``ray==2.47.1``) per-task overhead; runs inside ``bench/.venv-rayworkflows``.

Same workloads, sizes and protocol as ``bench/overhead.py``: the ``harness.rayworkflows_dag``
shapes (``chain``: N dependent ``inc`` tasks; ``fanout``: N ``leaf`` tasks + one ``total``
receiving all N values), run with ``workflow.run`` (every task durably checkpointed by Ray
Workflows into its storage). Timed: building the DAG and ``workflow.run`` to the value, a
fresh ``workflow_id`` per run; ``ray.init`` and the storage set-up are not. Protocol:
``harness.time_rounds``. Prints ONE JSON object on stdout: ``{"chain": [seconds...],
"fanout": [...], "meta": {...}}``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import harness


def main() -> None:
    args = harness.overhead_args()
    storage = Path(tempfile.mkdtemp(prefix="rayworkflows-bench-"))
    init_s = harness.rayworkflows_init(storage)
    import ray
    from ray import workflow

    def run(shape: str, n: int) -> int:
        return workflow.run(harness.rayworkflows_dag(shape, n), workflow_id=harness.unique(shape))

    out = harness.time_rounds("ray-workflows", run, {"chain": args.chain, "fanout": args.fanout}, args.repeats)
    out["meta"] = {"ray": ray.__version__, "python": sys.version.split()[0], "ray_init_s": init_s,
                   "warmup_s": out.pop("warmup_s"), "storage": str(storage)}
    ray.shutdown()
    shutil.rmtree(storage, ignore_errors=True)
    harness.emit(out)


if __name__ == "__main__":
    main()
