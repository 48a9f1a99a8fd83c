"""Ray Workflows (``ray==2.47.1``) per-task overhead; runs inside ``bench/.venv-rayworkflows``.

Same workloads, sizes and protocol as ``bench/overhead.py``: ``chain`` (N dependent
``inc`` tasks) and ``fanout`` (N independent ``leaf`` tasks + one ``total`` task receiving
all N values), built as a Ray DAG with ``.bind`` and run with ``workflow.run`` (every task
is durably checkpointed by Ray Workflows into its storage). Timed: building the DAG and
``workflow.run`` to the value, with a fresh ``workflow_id`` per run; ``ray.init`` and the
storage set-up are not timed. One warm-up per workload, then the repeats round-robin.
Prints ONE JSON object on stdout: ``{"chain": [seconds...], "fanout": [...], "meta": {...}}``.
"""

from __future__ import annotations

import argparse
import json
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

    import ray
    from ray import workflow

    storage = tempfile.mkdtemp(prefix="rayworkflows-bench-")
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, storage=f"file://{storage}")
    init_s = time.perf_counter() - t0

    @ray.remote
    def inc(x: int) -> int:
        return x + 1

    @ray.remote
    def leaf(i: int) -> int:
        return i

    @ray.remote
    def total(*xs: int) -> int:
        return sum(xs)

    def chain(n: int) -> int:
        node = 0
        for _ in range(n):
            node = inc.bind(node)
        return workflow.run(node, workflow_id=f"chain-{uuid.uuid4().hex[:12]}")

    def fanout(n: int) -> int:
        return workflow.run(total.bind(*[leaf.bind(i) for i in range(n)]), workflow_id=f"fanout-{uuid.uuid4().hex[:12]}")

    workloads = {"chain": (chain, args.chain, lambda n: n), "fanout": (fanout, args.fanout, lambda n: n * (n - 1) // 2)}

    def time_once(name: str) -> float:
        fn, n, expected = workloads[name]
        started = time.perf_counter()
        value = fn(n)
        elapsed = time.perf_counter() - started
        if value != expected(n):
            raise AssertionError(f"ray-workflows {name}({n}) returned {value!r}, expected {expected(n)}")
        return elapsed

    out: dict = {name: [] for name in workloads}
    warmup = {name: time_once(name) for name in workloads}
    for _ in range(args.repeats):
        for name in workloads:
            out[name].append(time_once(name))
    out["meta"] = {"ray": ray.__version__, "python": sys.version.split()[0], "ray_init_s": init_s, "warmup_s": warmup,
                   "storage": storage}
    ray.shutdown()
    shutil.rmtree(storage, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
