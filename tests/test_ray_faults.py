"""Lost parts of Ray during a run: a worker killed mid-task, a node removed from a
``ray.cluster_utils.Cluster`` while it holds the only copy of a value."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import exoflow_kernel as exo
from conftest import count, run_script


@exo.task(effect="transactional")
def fragile_save(pid_file, counter_dir):
    with open(Path(counter_dir) / "save", "a") as f:
        f.write("x\n")
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(3 if count(counter_dir, "save") == 1 else 0)
    exo.context().write("ledger", [{"id": i} for i in range(10)])
    return 10


def test_worker_killed_mid_task_is_retried_and_rows_land_once(store, counter_dir, tmp_path):
    pid_file = tmp_path / "pid"
    future = exo.run_async(fragile_save.bind(str(pid_file), str(counter_dir)), workflow_id="kill-worker")
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert future.result(timeout=120) == 10
    assert count(counter_dir, "save") == 2  # really ran twice...
    assert exo.sql("select count(*), count(distinct id) from ledger") == [(10, 10)]  # ...rows once


CLUSTER_SCRIPT = """
import json, os, sys
import ray
from ray.cluster_utils import Cluster
import numpy as np
import exoflow_kernel as exo

counters = os.environ["COUNTERS"]

def tick(name):
    with open(os.path.join(counters, name), "a") as f:
        f.write("x\\n")

@exo.task(checkpoint=False, resources={"doomed": 0.01})
def make_off(n):
    tick("make_off")
    return np.full(n, 2.0)

@exo.task(checkpoint="sync", resources={"doomed": 0.01})
def make_ckpt(n):
    tick("make_ckpt")
    return np.full(n, 3.0)

@exo.task(resources={"head": 0.01})
def consume(a, b, go):
    return float(a.sum() + b.sum())

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}})
doomed = cluster.add_node(num_cpus=1, resources={"doomed": 1})
cluster.wait_for_nodes()
exo.init(os.environ["EXOFLOW_STORE"], ray_address=cluster.address)
n = 1_000_000  # 8 MB: lives in the node's object store, not inline in the driver
future = exo.run_async(consume.bind(make_off.bind(n), make_ckpt.bind(n), exo.wait_for_event("go")),
                       workflow_id="node-loss")
import time
while exo.status("node-loss") == "RUNNING" and not all(
        r.state == "committed" for r in exo.lineage("node-loss") if r.name.startswith("make")):
    time.sleep(0.1)
cluster.remove_node(doomed)
cluster.add_node(num_cpus=1, resources={"doomed": 1})  # somewhere to rebuild the lost value
exo.send_event("node-loss", "go", True)
print("RESULT " + json.dumps(future.result(timeout=300)))
ray.shutdown()
cluster.shutdown()
"""


def test_node_removed_while_holding_the_only_copy(tmp_path, counter_dir):
    proc = run_script(CLUSTER_SCRIPT, tmp_path / "store", env={"COUNTERS": str(counter_dir)}, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert result == 5.0 * 1_000_000
    assert count(counter_dir, "make_off") == 2  # checkpoint=False: rebuilt from lineage by re-running
    assert count(counter_dir, "make_ckpt") == 1  # committed: rebuilt from its checkpoint, never re-run
