"""The engine in one process: DAGs, options, checkpoints, effects, continuations, events."""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
import ray

import exoflow_kernel as exo
from conftest import count, run_script


def tick(counter_dir: Path, name: str) -> None:
    with open(Path(counter_dir) / name, "a") as f:
        f.write(f"{os.getpid()}\n")


@exo.task
def add(a, b):
    return a + b


@exo.task
def sum_of(*xs):
    return sum(xs)


@exo.task
def counted(counter_dir, name, value):
    tick(counter_dir, name)
    return value


@exo.task(effect="transactional")
def save(counter_dir, rows):
    tick(counter_dir, "save")
    exo.context().write("sales", [dict(r, key=exo.context().idempotency_key) for r in rows])
    return len(rows)


@exo.task(deterministic=False)
def noise(counter_dir):
    tick(counter_dir, "noise")
    return random.random()


@exo.task
def fib(n):
    if n < 2:
        return n
    return exo.continuation(add.bind(fib.bind(n - 1), fib.bind(n - 2)))


def test_run_returns_value_and_same_id_reuses_it(store, counter_dir):
    node = add.bind(counted.bind(counter_dir, "a", 1), counted.bind(counter_dir, "b", 2))
    assert exo.run(node, workflow_id="w") == 3
    assert exo.run(node, workflow_id="w") == 3
    assert exo.resume("w") == 3
    assert (count(counter_dir, "a"), count(counter_dir, "b")) == (1, 1)
    assert exo.status("w") == "SUCCESSFUL"
    assert exo.output("w", task="counted") == 1
    assert exo.output("w", task="counted.1") == 2


def test_task_ids_are_stable_in_bind_order(store):
    a = add.bind(1, 2)
    b = add.bind(a, 3)
    c = add.options(name="total").bind(b, add.bind(4, 5))
    exo.run(c, workflow_id="ids")
    ids = [r.task_id for r in exo.lineage("ids")]
    assert ids == ["add", "add.1", "add.2", "total"]
    assert exo.output("ids", task="total") == 15


def test_every_checkpoint_mode_gives_the_same_result(store, counter_dir):
    def pipeline(mode):
        first = counted.options(name="first", checkpoint=mode).bind(counter_dir, f"first-{mode}", 10)
        return add.options(checkpoint=mode).bind(first, 5)

    results = {str(m): exo.run(pipeline(m), workflow_id=f"mode-{m}") for m in ("sync", "async", False)}
    assert set(results.values()) == {15}
    recs = {r.task_id: r for r in exo.lineage("mode-async")}
    assert recs["first"].checkpoint == "async" and recs["first"].output_bytes > 0
    off = {r.task_id: r for r in exo.lineage("mode-False")}
    assert off["first"].checkpoint == "off" and off["first"].output_bytes is None


def test_large_array_goes_to_a_blob_file_and_back(store):
    @exo.task(checkpoint="async")
    def make(n):
        return np.arange(n, dtype=np.float64)

    @exo.task
    def total(arr):
        return float(arr.sum())

    n = 2_000_000
    assert exo.run(total.bind(make.bind(n)), workflow_id="big") == float(n * (n - 1) / 2)
    files = list((store / "blobs").rglob("*.blob"))
    assert any(f.stat().st_size > 8 * n for f in files)
    np.testing.assert_array_equal(exo.output("big", task="make"), np.arange(n, dtype=np.float64))


def test_transactional_rows_land_once_with_the_commit(store, counter_dir):
    rows = [{"id": i, "amount": i * 1.5} for i in range(5)]
    assert exo.run(save.bind(counter_dir, rows), workflow_id="tx") == 5
    assert exo.run(save.bind(counter_dir, rows), workflow_id="tx") == 5
    assert exo.sql("select count(*), count(distinct id), min(key) from sales") == [(5, 5, "exo:tx:save")]
    assert count(counter_dir, "save") == 1


def test_write_outside_transactional_task_is_refused(store):
    @exo.task
    def sneaky():
        exo.context().write("sales", [{"id": 1}])

    with pytest.raises(exo.WriteNotAllowedError, match="effect='transactional'"):
        exo.run(sneaky.bind(), workflow_id="sneaky")
    assert exo.status("sneaky") == "FAILED"
    assert exo.sql("select count(*) from information_schema.tables where table_name = 'sales'") == [(0,)]


def test_idempotent_task_sees_a_stable_key(store):
    @exo.task(effect="idempotent")
    def charge(amount):
        ctx = exo.context()
        return (ctx.idempotency_key, ctx.attempt, amount)

    key, attempt, amount = exo.run(charge.bind(10), workflow_id="pay")
    assert key == "exo:pay:charge" and attempt == 1 and amount == 10
    rows = exo.sql("select phase, idempotency_key from exoflow.effects where workflow_id = 'pay' order by phase")
    assert rows == [("commit", key), ("intent", key)]


def test_continuations_build_dynamic_workflows(store):
    assert exo.run(fib.bind(6), workflow_id="fib") == 8
    ids = {r.task_id for r in exo.lineage("fib")}
    assert "fib/add" in ids and "fib/fib" in ids
    assert exo.output("fib") == 8
    assert exo.run(fib.bind(6), workflow_id="fib") == 8


def test_downstream_of_a_continuation_gets_its_final_value(store):
    assert exo.run(add.bind(fib.bind(5), 100), workflow_id="after-fib") == 105


def test_events_are_durable_and_delivered(store):
    node = add.bind(exo.wait_for_event("approved"), 1)
    future = exo.run_async(node, workflow_id="ev")
    deadline = time.time() + 30
    while exo.status("ev") != "RUNNING" and time.time() < deadline:
        time.sleep(0.05)
    assert exo.status("ev") == "RUNNING"
    assert exo.send_event("ev", "approved", 41) is True
    assert future.result(timeout=60) == 42
    assert exo.send_event("ev", "approved", 99) is False  # the first payload stays
    assert exo.output("ev", task="event:approved") == 41


def test_wait_until_committed_orders_tasks(store, counter_dir):
    first = counted.options(name="first").bind(counter_dir, "first", 1)
    second = counted.options(name="second", wait_until_committed=("first",)).bind(counter_dir, "second", 2)
    assert exo.run(add.bind(first, second), workflow_id="wuc") == 3
    recs = {r.task_id: r for r in exo.lineage("wuc")}
    assert recs["second"].started_at >= recs["first"].finished_at


def test_task_returning_an_object_ref_is_resolved(store):
    @exo.task
    def make_ref():
        return ray.put({"x": 1})

    assert exo.run(make_ref.bind(), workflow_id="ref") == {"x": 1}
    assert exo.output("ref") == {"x": 1}


def test_failure_then_resume_reruns_only_what_failed(store, counter_dir, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("1")

    @exo.task(max_retries=0)
    def fragile(x, flag_path):
        if Path(flag_path).exists():
            raise RuntimeError("disk on fire")
        return x * 2

    node = fragile.bind(counted.bind(counter_dir, "up", 21), str(flag))
    with pytest.raises(exo.WorkflowFailedError, match="disk on fire") as info:
        exo.run(node, workflow_id="frag")
    assert info.value.task_id == "fragile"
    assert exo.status("frag") == "FAILED"
    flag.unlink()
    assert exo.resume("frag") == 42
    assert count(counter_dir, "up") == 1
    states = {r.task_id: r.state for r in exo.lineage("frag")}
    assert states == {"counted": "recovered", "fragile": "re-executed"}


def test_cancel_stops_and_resume_finishes(store, counter_dir):
    @exo.task
    def slow(x):
        time.sleep(30)
        return x

    gate = exo.wait_for_event("go")
    future = exo.run_async(add.bind(gate, counted.bind(counter_dir, "c", 1)), workflow_id="cx")
    while exo.status("cx") != "RUNNING":
        time.sleep(0.05)
    exo.cancel("cx")
    with pytest.raises(exo.WorkflowCanceledError):
        future.result(timeout=60)
    assert exo.status("cx") == "CANCELED"
    exo.send_event("cx", "go", 1)
    assert exo.resume("cx") == 2


def test_list_and_delete(store):
    exo.run(add.bind(1, 1), workflow_id="keep")
    exo.run(add.bind(2, 2), workflow_id="drop")
    assert ("drop", "SUCCESSFUL") in exo.list_workflows()
    exo.delete("drop")
    assert exo.list_workflows() == [("keep", "SUCCESSFUL")]
    assert exo.list_workflows(status="FAILED") == []
    assert not (store / "blobs" / "drop").exists()
    with pytest.raises(exo.WorkflowNotFoundError):
        exo.status("drop")


def test_graph_has_every_task_and_legend(store):
    exo.run(fib.bind(3), workflow_id="g")
    dot = exo.graph("g")
    svg = dot.pipe(format="svg").decode()
    for rec in exo.lineage("g"):
        assert rec.task_id in svg
    assert "legend" in svg and "ambiguous" in svg


def test_a_root_without_checkpoint_still_keeps_the_result(store, counter_dir):
    node = counted.options(checkpoint=False).bind(counter_dir, "root", 7)
    assert exo.run(node, workflow_id="root-off") == 7
    assert exo.run(node, workflow_id="root-off") == 7
    assert exo.output("root-off") == 7
    assert count(counter_dir, "root") == 1


# -- checkpoint=False tasks run untracked: no report of their own ------------------------


@exo.task(checkpoint=False)
def off(counter_dir, name, value):
    tick(counter_dir, name)
    return value


@exo.task(checkpoint=False)
def off_split(counter_dir, n):
    """Returns a continuation, which nobody but a tracked task downstream hears of."""
    tick(counter_dir, "split")
    return exo.continuation(add.bind(counted.bind(counter_dir, "half", n // 2), off.bind(counter_dir, "rest", n - n // 2)))


def test_a_continuation_from_an_untracked_task_reaches_past_untracked_tasks(store, counter_dir):
    # off_split -> off (untracked, gets the placeholder first) -> add (tracked, reports both)
    node = add.bind(off.bind(counter_dir, "middle", off_split.bind(counter_dir, 7)), 100)
    assert exo.run(node, workflow_id="cont-off") == 107
    assert [count(counter_dir, n) for n in ("split", "half", "rest", "middle")] == [1, 1, 1, 1]
    states = {r.task_id: r.state for r in exo.lineage("cont-off")}
    assert states == dict.fromkeys(["off_split", "off_split/counted", "off_split/off", "off_split/add", "off", "add"],
                                   "committed"), states
    assert all(r.started_at is not None and r.started_at <= r.finished_at for r in exo.lineage("cont-off"))
    assert exo.run(node, workflow_id="cont-off") == 107
    assert count(counter_dir, "middle") == 1


def test_an_untracked_task_that_raises_is_the_one_reported(store):
    @exo.task(checkpoint=False)
    def boom(x):
        raise ValueError(f"boom {x}")

    with pytest.raises(exo.WorkflowFailedError, match=r"'boom'.*ValueError: boom 7"):
        exo.run(add.bind(boom.bind(7), 1), workflow_id="boom")
    assert {r.task_id: r.state for r in exo.lineage("boom")} == {"boom": "failed", "add": "pending"}


def test_a_live_graph_shows_an_untracked_task_done_before_anything_downstream_reports(store, counter_dir):
    future = exo.run_async(add.bind(off.bind(counter_dir, "early", 1), exo.wait_for_event("go")), workflow_id="live-off")
    deadline = time.time() + 60
    while time.time() < deadline and {r.task_id: r.state for r in exo.lineage("live-off")}.get("off") != "committed":
        time.sleep(0.05)
    states = {r.task_id: r.state for r in exo.lineage("live-off")}
    assert states["off"] == "committed" and states["add"] == "pending", states
    assert {r.task_id: r for r in exo.lineage("live-off")}["off"].started_at is not None
    assert exo.sql("select count(*) from exoflow.task_log where workflow_id = 'live-off'") == [(0,)]  # no row yet
    exo.send_event("live-off", "go", 2)
    assert future.result(timeout=60) == 3
    assert count(counter_dir, "early") == 1


@exo.task
def spawn_waiter(counter_dir):
    """Its continuation waits for a task of the parent graph that runs untracked."""
    return exo.continuation(counted.options(name="waiter", wait_until_committed=("slow_off",)).bind(counter_dir, "waiter", 2))


def test_wait_until_committed_from_a_continuation_waits_for_an_untracked_task(store, counter_dir):
    @exo.task(checkpoint=False, name="slow_off")
    def slow_off(counter_dir):
        time.sleep(1.0)
        tick(counter_dir, "slow_off")
        return 1

    # Only `add` is downstream of slow_off, and add needs the waiter: the waiter must
    # learn of slow_off's end some other way (a probe), or the run would hang.
    assert exo.run(add.bind(slow_off.bind(counter_dir), spawn_waiter.bind(counter_dir)), workflow_id="wuc-off") == 3
    recs = {r.task_id: r for r in exo.lineage("wuc-off")}
    assert recs["spawn_waiter/waiter"].started_at >= recs["slow_off"].finished_at
    assert (count(counter_dir, "slow_off"), count(counter_dir, "waiter")) == (1, 1)


def test_a_growing_workflow_reruns_only_what_changed(store, counter_dir):
    a = counted.options(name="a").bind(counter_dir, "a", 1)
    b = counted.options(name="b").bind(counter_dir, "b", 2)
    assert exo.run(add.bind(a, b), workflow_id="grow", changed=()) == 3
    b2 = counted.options(name="b").bind(counter_dir, "b", 20)  # the "cell" b was edited
    c = counted.options(name="c").bind(counter_dir, "c", 300)   # and a new one added
    assert exo.run(add.bind(add.bind(a, b2), c), workflow_id="grow", changed=["b"]) == 321
    assert (count(counter_dir, "a"), count(counter_dir, "b"), count(counter_dir, "c")) == (1, 2, 1)
    states = {r.task_id: r.state for r in exo.lineage("grow")}
    assert states["a"] == "recovered" and states["b"] == "stale" and states["add"] == "stale"
    assert exo.resume("grow") == 321
    with pytest.raises(exo.WorkflowExistsError):
        exo.run(add.bind(a, c), workflow_id="grow")  # without changed=, a different graph is refused


def test_changed_options_of_a_task_show_in_lineage(store):
    exo.run(add.options(name="x").bind(1, 2), workflow_id="opts", changed=())
    exo.run(add.options(name="x", checkpoint="async").bind(1, 2), workflow_id="opts", changed=["x"])
    assert [(r.task_id, r.checkpoint) for r in exo.lineage("opts")] == [("x", "async")]


def test_arguments_and_events_made_in_main_reach_a_fresh_process(tmp_path):
    """Functions and classes defined in __main__ (a notebook, a script) pickle by value."""
    from conftest import run_script

    store = tmp_path / "main-store"
    first = run_script("""
        import exoflow_kernel as exo
        class Point:
            def __init__(self, x): self.x = x
        def double(p): return 2 * p.x
        @exo.task
        def apply(f, p): return f(p)
        @exo.task
        def combine(a, ev): return a + ev.x
        f = exo.run_async(combine.bind(apply.bind(double, Point(20)), exo.wait_for_event("go")), workflow_id="m")
        import time
        while exo.status("m") != "RUNNING": time.sleep(0.05)
        exo.send_event("m", "go", Point(2))
        print("RESULT", f.result())
    """, store)
    assert first.returncode == 0 and "RESULT 42" in first.stdout, first.stderr[-2000:]
    again = run_script("""
        import exoflow_kernel as exo
        print("RESULT", exo.output("m", task="event:go").x, exo.resume("m"))
    """, store)
    assert again.returncode == 0 and "RESULT 2 42" in again.stdout, again.stderr[-2000:]


def test_shutdown_leaves_a_running_workflow_and_a_joined_ray_alone(tmp_path, ray_address):
    """What a kernel's shutdown calls (jupyter_ext): with a workflow still running it must
    change nothing (the workflow stays resumable); once it is done it lets go of the store,
    and a Ray we joined is not ours to stop (the one we start is: test_notebook_kernel)."""
    from conftest import run_script

    out = run_script("""
        import ray
        import exoflow_kernel as exo
        from exoflow_kernel import api
        @exo.task
        def plus(a, b): return a + b
        f = exo.run_async(plus.bind(1, exo.wait_for_event("go")), workflow_id="bg")
        import time
        while exo.status("bg") != "RUNNING": time.sleep(0.05)
        api.shutdown()
        print("RUNNING-AFTER", ray.is_initialized(), exo.status("bg"))
        exo.send_event("bg", "go", 41)
        print("RESULT", f.result())
        api.shutdown()
        print("DONE-AFTER", ray.is_initialized())
    """, tmp_path / "store", env={"EXOFLOW_RAY_ADDRESS": ray_address})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RUNNING-AFTER True RUNNING" in out.stdout and "RESULT 42" in out.stdout, out.stdout
    assert "DONE-AFTER True" in out.stdout, out.stdout
    assert not (tmp_path / "store" / "owner.json").exists()


def test_a_finished_run_holds_no_object_refs_when_its_caller_wakes(store):
    """The coordinator drops its refs before exo.run returns. Freed afterwards, by its
    thread, they raced a ray.shutdown() made next, and Ray aborted the process."""
    import ray

    counts = ray._private.worker.global_worker.core_worker.get_all_reference_counts
    before = {ref for ref, c in counts().items() if c["local"]}
    node = sum_of.bind(*[add.bind(i, 0) for i in range(300)])
    assert exo.run(node, workflow_id="refs") == 44850
    held = {ref for ref, c in counts().items() if c["local"]} - before
    assert len(held) <= 1, f"{len(held)} ObjectRefs still held after exo.run returned"


def test_a_deep_chain_is_stored_and_resumed(store):
    node = add.bind(0, 1)
    for _ in range(1500):  # deeper than Python's recursion limit if pickled as nested nodes
        node = add.bind(node, 1)
    assert exo.run(node, workflow_id="deep") == 1501
    assert len(exo.stored_graph("deep").nodes) == 1501
    assert exo.resume("deep") == 1501


def test_a_failed_task_is_reported_once_not_as_ray_unhandled_errors(tmp_path, ray_address):
    """The workflow's error tells the story; Ray must not also log the failed task's (and its
    downstream's) dropped results as "Unhandled error" in the user's notebook."""
    out = run_script("""
        import gc, time
        import exoflow_kernel as exo

        @exo.task
        def boom(x):
            raise ValueError("out of paper")

        @exo.task
        def after(*xs):
            return xs

        try:
            failing = boom.bind(1)
            exo.run(after.bind(after.bind(failing), after.bind(after.bind(failing))), "w")
        except exo.WorkflowFailedError as exc:
            print("FAILED", exc)
        gc.collect()
        time.sleep(2)  # Ray reports unhandled errors from a background thread
    """, tmp_path / "store", env={"EXOFLOW_RAY_ADDRESS": ray_address})
    assert "FAILED Workflow 'w' failed in task 'boom'" in out.stdout, out.stderr
    assert "Unhandled error" not in out.stderr, out.stderr[-3000:]


def test_graph_of_an_event_task_has_no_phantom_node():
    """Event nodes are named ``event:<name>``; graphviz must not read that as node:port."""
    from collections import namedtuple

    from exoflow_kernel.render import render

    rec = namedtuple("rec", "task_id state")
    dot = render("w", [rec("event:approved", "committed"), rec("approve", "pending")], [("event:approved", "approve")])
    svg = dot.pipe(format="svg").decode()
    titles = re.findall(r"<title>([^<]+)</title>", svg)
    assert "event:approved&#45;&gt;approve" in titles, titles
    assert "event" not in titles, "a phantom node named 'event'"
