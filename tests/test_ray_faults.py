"""Lost parts of Ray during a run: a worker killed mid-task, an actor returned by a task
killed, a node removed from a ``ray.cluster_utils.Cluster`` while it holds the only copy
of a value."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import ray

import exoflow_kernel as exo
from conftest import ROOT, count, run_script


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


def tick(counter_dir, name):
    with open(Path(counter_dir) / name, "a") as f:
        f.write("x\n")


@ray.remote(num_cpus=0)
class Tally:
    """A live actor: its state lives in its process, and cannot be checkpointed."""

    def __init__(self, pid_file):
        Path(pid_file).write_text(str(os.getpid()))

    def add(self, x):
        return x + 1


@exo.task
def make_tally(pid_file, counter_dir):
    tick(counter_dir, "make_tally")
    actor = Tally.remote(pid_file)
    ray.get(actor.add.remote(0))  # running: its pid is in pid_file
    return actor


@exo.task
def use_tally(actor, counter_dir, go):
    tick(counter_dir, "use_tally")
    return ray.get(actor.add.remote(41))


@exo.task
def tally_ref(pid_file, counter_dir):
    tick(counter_dir, "tally_ref")
    actor = Tally.remote(pid_file)
    return actor.add.remote(1)  # an ObjectRef made by the actor


@exo.task
def use_value(value, counter_dir, go):
    tick(counter_dir, "use_value")
    return value * 10


def _kill_actor_once_committed(workflow_id, producer, pid_file):
    """Wait until ``producer`` committed, then SIGKILL the actor's real process."""
    deadline = time.time() + 120
    while time.time() < deadline:
        states = {r.task_id: r.state for r in exo.lineage(workflow_id)}
        if states.get(producer) == "committed" and pid_file.exists() and pid_file.read_text():
            break
        assert exo.status(workflow_id) == "RUNNING"
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    pid_file.unlink()
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return pid  # already gone (the actor may end with its last handle)
    while time.time() < deadline:  # the raylet reaps it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"actor process {pid} survived SIGKILL")


def test_actor_returned_by_a_task_killed_is_remade_by_running_the_task_again(store, counter_dir, tmp_path):
    """A handle is not a durable value: when the actor behind a task's output dies before a
    downstream task uses it, the (deterministic) producer runs again, making a new actor,
    and the downstream task runs with it. Counted: producer 2, consumer 2 (the first use
    hit the dead actor), and the workflow finishes with the failure-free result."""
    pid_file = tmp_path / "actor.pid"
    future = exo.run_async(use_tally.bind(make_tally.bind(str(pid_file), str(counter_dir)), str(counter_dir),
                                          exo.wait_for_event("go")), workflow_id="kill-actor")
    old_pid = _kill_actor_once_committed("kill-actor", "make_tally", pid_file)
    exo.send_event("kill-actor", "go", True)
    assert future.result(timeout=180) == 42
    assert count(counter_dir, "make_tally") == 2
    assert count(counter_dir, "use_tally") == 2
    assert int(pid_file.read_text()) != old_pid  # a new actor, in a new process
    states = {r.task_id: r.state for r in exo.lineage("kill-actor")}
    assert states == {"make_tally": "re-executed", "event:go": "committed", "use_tally": "committed"}
    assert exo.status("kill-actor") == "SUCCESSFUL"


def test_actor_of_a_nondeterministic_task_killed_fails_clearly(store, counter_dir, tmp_path):
    """A nondeterministic producer must not run again (it could make a different actor):
    the workflow fails with an error that names the producer, the actor and why."""
    pid_file = tmp_path / "actor.pid"
    producer = make_tally.options(deterministic=False)
    future = exo.run_async(use_tally.bind(producer.bind(str(pid_file), str(counter_dir)), str(counter_dir),
                                          exo.wait_for_event("go")), workflow_id="kill-actor-nd")
    _kill_actor_once_committed("kill-actor-nd", "make_tally", pid_file)
    exo.send_event("kill-actor-nd", "go", True)
    with pytest.raises(exo.ActorLostError, match=r"from the output of task 'make_tally', and that actor died.*"
                                                 r"nondeterministic.*Return plain data") as info:
        future.result(timeout=180)
    assert (info.value.task_id, info.value.producer) == ("use_tally", "make_tally")
    assert count(counter_dir, "make_tally") == 1 and count(counter_dir, "use_tally") == 1
    assert exo.status("kill-actor-nd") == "FAILED"


def test_object_ref_made_by_a_killed_actor_is_already_durable(store, counter_dir, tmp_path):
    """A task that returns an ObjectRef produced by its actor: the engine stores the value,
    not the ref, so killing the actor later changes nothing and nothing runs again."""
    pid_file = tmp_path / "actor.pid"
    future = exo.run_async(use_value.bind(tally_ref.bind(str(pid_file), str(counter_dir)), str(counter_dir),
                                          exo.wait_for_event("go")), workflow_id="kill-actor-ref")
    _kill_actor_once_committed("kill-actor-ref", "tally_ref", pid_file)
    exo.send_event("kill-actor-ref", "go", True)
    assert future.result(timeout=180) == 20
    assert count(counter_dir, "tally_ref") == 1 and count(counter_dir, "use_value") == 1


def test_actor_in_a_checkpoint_of_a_dead_driver_is_remade_on_resume(store, counter_dir, tmp_path):
    """After a crash the actor died with the driver's Ray, and the handle in the producer's
    checkpoint no longer even unpickles in a fresh process: that checkpoint is unusable, so
    resume re-executes the (deterministic) producer instead of failing on it."""
    pid_file = tmp_path / "actor.pid"
    node = use_tally.bind(make_tally.bind(str(pid_file), str(counter_dir)), str(counter_dir), 1)
    assert exo.run(node, workflow_id="actor-resume") == 42
    s = exo.init(store)
    with s.transaction() as cur:  # as if the driver died before use_tally committed
        cur.execute("delete from exoflow.task_log where workflow_id = 'actor-resume' and task_id = 'use_tally'")
        cur.execute("update exoflow.workflows set status = 'RUNNING' where workflow_id = 'actor-resume'")
    exo.close()
    try:
        proc = run_script("""
            import exoflow_kernel as exo
            print("RESULT", exo.resume("actor-resume"))
            print("STATES", sorted((r.task_id, r.state) for r in exo.lineage("actor-resume")))
        """, store, env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}, timeout=400)
    finally:
        exo.init(store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT 42" in proc.stdout
    assert "STATES [('make_tally', 're-executed'), ('use_tally', 're-executed')]" in proc.stdout
    assert count(counter_dir, "make_tally") == 2 and count(counter_dir, "use_tally") == 2


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
