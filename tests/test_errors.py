"""Bad input gets a clear error, and the store is left exactly as it was."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import exoflow_kernel as exo
from conftest import count


@exo.task
def add(a, b):
    return a + b


@exo.task
def counted(counter_dir, name, value):
    with open(Path(counter_dir) / name, "a") as f:
        f.write("x\n")
    return value


@exo.task(effect="transactional")
def save(rows):
    exo.context().write("sales", rows)
    return len(rows)


@pytest.fixture
def reference(store):
    """A committed workflow whose lineage and rows must survive every bad call."""
    exo.run(save.bind([{"id": 1}, {"id": 2}]), workflow_id="ref")
    return store


def store_state():
    return (exo.list_workflows(), [tuple(r[:6]) for r in exo.lineage("ref")],
            exo.sql("select * from sales order by id"), exo.output("ref"))


BAD_OPTIONS = [
    (dict(checkpoint="sometimes"), "checkpoint"),
    (dict(effect="maybe"), "effect"),
    (dict(max_retries=-1), "max_retries"),
    (dict(deterministic="no"), "deterministic"),
    (dict(name="has space"), "name"),
    (dict(checkpoint=False, effect="transactional"), "effect='transactional'"),
    (dict(checkpoint="async", deterministic=False), "deterministic=False"),
]


@pytest.mark.parametrize("options,needle", BAD_OPTIONS)
def test_bad_task_options(reference, options, needle):
    before = store_state()
    with pytest.raises(exo.InvalidOptionError, match="Invalid value") as info:
        exo.task(**options)(lambda: 1)
    assert needle in str(info.value) or needle.split("=")[0] in str(info.value)
    assert store_state() == before


@pytest.mark.parametrize("bad_id", ["", "has space", "a/b", 42, "x" * 201])
def test_bad_workflow_ids(reference, bad_id):
    before = store_state()
    with pytest.raises(exo.InvalidOptionError, match="workflow_id"):
        exo.run(add.bind(1, 2), workflow_id=bad_id)
    assert store_state() == before


def test_unknown_workflow_and_task(reference):
    before = store_state()
    for call in (exo.status, exo.resume, exo.lineage, exo.output, exo.cancel, exo.delete, exo.graph):
        with pytest.raises(exo.WorkflowNotFoundError, match="exo.list_workflows"):
            call("nope")
    with pytest.raises(exo.TaskNotFoundError, match="Its tasks are: save"):
        exo.output("ref", task="nope")
    with pytest.raises(exo.WorkflowNotFoundError):
        exo.send_event("nope", "go", 1)
    assert store_state() == before


def test_cycle_is_refused(reference):
    a = add.bind(1, 2)
    b = add.bind(a, 3)
    a.args = (b, 1)  # only reachable by editing a node by hand, as a buggy builder might
    before = store_state()
    with pytest.raises(exo.CycleError, match="cycle: add"):
        exo.run(b, workflow_id="cyc")
    assert store_state() == before


def test_not_a_node(reference):
    before = store_state()
    with pytest.raises(exo.InvalidOptionError, match="task.bind"):
        exo.run(lambda: 1, workflow_id="x")
    with pytest.raises(exo.InvalidOptionError, match="task.bind"):
        exo.continuation(42)
    assert store_state() == before


def test_unpicklable_output_fails_the_task_clearly(reference):
    @exo.task(max_retries=0)
    def leaky():
        return threading.Lock()

    before = store_state()
    with pytest.raises(exo.UnpicklableOutputError, match="cannot be pickled") as info:
        exo.run(leaky.bind(), workflow_id="leaky")
    assert info.value.task_id == "leaky"
    assert exo.status("leaky") == "FAILED"
    assert store_state()[1:] == before[1:]


def test_unpicklable_argument_is_refused_before_anything_is_stored(reference):
    before = store_state()
    with pytest.raises(exo.UnpicklableWorkflowError, match="cannot be stored for resume"):
        exo.run(add.bind(threading.Lock(), 1), workflow_id="lockarg")
    assert store_state() == before


def test_same_id_with_another_graph(reference):
    before = store_state()
    with pytest.raises(exo.WorkflowExistsError, match="different graph"):
        exo.run(add.bind(1, 2), workflow_id="ref")
    assert store_state() == before


def test_second_resume_of_a_live_workflow(reference):
    future = exo.run_async(add.bind(exo.wait_for_event("go"), 1), workflow_id="live")
    while exo.status("live") != "RUNNING":
        time.sleep(0.02)
    with pytest.raises(exo.WorkflowLiveError, match="live process"):
        exo.resume("live")
    with pytest.raises(exo.WorkflowLiveError):
        exo.delete("live")
    exo.send_event("live", "go", 1)
    assert future.result(timeout=60) == 2


def test_bad_event_names_and_payloads(reference):
    before = store_state()
    with pytest.raises(exo.InvalidOptionError, match="event name"):
        exo.wait_for_event("two words")
    with pytest.raises(exo.EventError, match="does not pickle"):
        exo.send_event("ref", "go", threading.Lock())
    assert store_state() == before


def test_write_queries_are_refused_by_sql(reference):
    before = store_state()
    with pytest.raises(exo.QueryError, match="read queries only"):
        exo.sql("delete from sales")
    with pytest.raises(exo.QueryError, match="does not parse"):
        exo.sql("selec nothing")
    assert store_state() == before


def test_bad_rows_fail_only_their_task(reference):
    @exo.task(effect="transactional", max_retries=0)
    def wrong_type():
        exo.context().write("sales", [{"id": "not-a-number"}])
        return 1

    before = store_state()
    with pytest.raises(exo.WorkflowFailedError, match="rows could not be written"):
        exo.run(wrong_type.bind(), workflow_id="wrongrows")
    assert store_state()[1:] == before[1:]


def test_store_is_a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a directory")
    with pytest.raises(exo.StoreError, match="not writable"):
        exo.init(path)


def test_store_path_in_a_read_only_filesystem():
    with pytest.raises(exo.StoreError, match="Pick a writable directory"):
        exo.init("/proc/exoflow-store")


def test_corrupted_checkpoint_of_a_deterministic_task_is_recomputed(store, counter_dir):
    big = counted.options(name="big")
    node = add.bind(big.bind(counter_dir, "big", list(range(100_000))), [1])
    exo.run(node, workflow_id="corrupt")
    exo.run(add.bind(counted.bind(counter_dir, "n", 1), 1), workflow_id="other")
    blob = next((store / "blobs" / "corrupt").glob("big.*.blob"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    _forget_commit(store, "corrupt", "add")
    assert exo.resume("corrupt") == list(range(100_000)) + [1]
    assert count(counter_dir, "big") == 2
    states = {r.task_id: r.state for r in exo.lineage("corrupt")}
    assert states == {"big": "re-executed", "add": "re-executed"}


def test_missing_checkpoint_of_a_nondeterministic_task_fails_clearly(store):
    @exo.task(deterministic=False)
    def roll():
        return os.urandom(100_000)

    exo.run(add.bind(roll.bind(), b"!"), workflow_id="nd")
    next((store / "blobs" / "nd").glob("roll.*.blob")).unlink()
    _forget_commit(store, "nd", "add")
    with pytest.raises(exo.CheckpointCorruptedError, match="nondeterministic"):
        exo.resume("nd")
    assert exo.status("nd") == "RESUMABLE"  # nothing was run or replaced
    with pytest.raises(exo.CheckpointCorruptedError, match="missing"):
        exo.output("nd", task="roll")


def _forget_commit(store: Path, workflow_id: str, task_id: str) -> None:
    """Make a task look uncommitted, as if the driver died before its commit."""
    s = exo.init(store)
    with s.transaction() as cur:
        cur.execute("delete from exoflow.task_log where workflow_id = ? and task_id = ?", [workflow_id, task_id])
        cur.execute("update exoflow.workflows set status = 'RUNNING' where workflow_id = ?", [workflow_id])
