"""The coordinator: one loop per running workflow, in the driver.

It keeps Ray busy and DuckDB cheap at the same time:

* **dispatch** a task as soon as its upstream *values* exist as ObjectRefs, so
  Ray chains tasks without waiting on us; only tasks that must not start early
  wait here: idempotent effects (intent durable, upstream committed first),
  ``wait_until_committed``, events, and values still being verified on load;
* **collect** the small meta results of finished tasks, as Ray reports them done;
  a task that nothing needs to know about early (``checkpoint=False``, no effect,
  nothing waits for its commit) runs *untracked*: no meta result, and it counts as
  finished once a task downstream of it reports (Ray ran that one on its value);
* **commit** every finished task whose upstream is durable, in one grouped
  transaction (:mod:`commit`) every ``COMMIT_INTERVAL`` at most, in
  topological order: so no downstream effect is ever durable before the
  checkpoints it depends on.

Continuations are expanded here: a task that returned ``exo.continuation(n)``
commits at once, its sub-graph joins the run under ``<task>/`` ids, and tasks
that had already received its placeholder report ``deferred`` and are
dispatched again with the real value.
"""

from __future__ import annotations

import io
import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import networkx as nx
import ray

from . import blobs, commit, executor, faults, recovery
from .context import TaskContext
from .dag import Continuation, EventNode, Graph, Node, build_graph, checkpoint_mode, task_row
from .errors import (
    ActorLostError, CheckpointCorruptedError, ExoflowError, WorkflowCanceledError, WorkflowFailedError,
)
from .store import Store

COMMIT_INTERVAL = 0.05  # seconds between grouped commits while tasks keep finishing
WAIT_WINDOW = 4096  # oldest pending refs looked at per loop


@dataclass
class TaskRun:
    """The coordinator's view of one task during this run."""

    task_id: str
    node: Node
    label: str
    phase: str = "waiting"  # waiting|loading|running|finished|durable|failed
    value: Any = None  # ObjectRef of the value, once it exists
    alias: str | None = None  # continuation: our value is this task's value
    meta: dict | None = None
    persisted: dict | None = None
    intent_durable: bool = False
    replay: bool = False
    spec: executor.Spec | None = None
    tracked: bool = True  # False: one Ray return, no report of its own (see executor.run_untracked)

    @property
    def options(self):
        return self.node.options


@dataclass
class Coordinator:
    store: Store
    workflow_id: str
    graph: Graph
    run: int
    snapshot: recovery.Snapshot
    plan: recovery.Plan
    tasks: dict[str, TaskRun] = field(default_factory=dict)
    position: dict[str, int] = field(default_factory=dict)  # adoption order: topological
    results: set[str] = field(default_factory=set)  # the root, and every continuation's root
    ids: dict[int, str] = field(default_factory=dict)
    pending: dict[Any, tuple[str, str]] = field(default_factory=dict)  # meta ref -> (task, kind)
    wakeup: threading.Event = field(default_factory=threading.Event)
    waiting: dict[str, None] = field(default_factory=dict)  # tasks not yet dispatched (ordered set)
    finished: dict[str, None] = field(default_factory=dict)  # tasks done, not yet durable
    open_tasks: int = 0  # tasks not yet durable
    last_commit: float = 0.0
    batch: commit.Batch = field(default_factory=commit.Batch)
    error: ExoflowError | None = None
    canceled: bool = False
    remade: dict[str, int] = field(default_factory=dict)  # task -> times run again for a lost actor
    awaited: set[str] = field(default_factory=set)  # names some task's wait_until_committed gives
    held: bool = False  # a waiting task has its inputs and waits only for upstream durability
    fresh: bool = False  # a task finished since the last commit

    # -- set-up -------------------------------------------------------------------

    def __post_init__(self) -> None:
        self.results.add(self.graph.root)
        self._adopt(self.graph, self.plan)

    def _adopt(self, graph: Graph, plan: recovery.Plan) -> None:
        """Make the tasks of ``graph`` part of this run, as ``plan`` labels them."""
        self.ids.update(graph.ids)
        self._await({name for t in graph.order() for name in graph.nodes[t].options.wait_until_committed})
        for task_id in graph.order():
            if task_id in self.tasks:
                continue
            run = TaskRun(task_id, graph.nodes[task_id], plan.labels[task_id], phase="new",
                          replay=task_id in plan.replay, tracked=not self._untrackable(graph, task_id))
            run.intent_durable = task_id in self.snapshot.intents
            self.tasks[task_id] = run
            self.position[task_id] = len(self.position)
            self.open_tasks += 1
            if run.label == recovery.SKIPPED:
                self._set_phase(run, "durable")
            elif run.label == recovery.RECOVERED:
                self._recover(run)
            else:
                self._set_phase(run, "waiting")

    def _untrackable(self, graph: Graph, task_id: str) -> bool:
        """Whether a task can run untracked: nothing about it has to be durable, or known
        to be, before something else may go on (its commit only draws the graph)."""
        node, opts = graph.nodes[task_id], graph.nodes[task_id].options
        if isinstance(node, EventNode) or task_id in self.results or checkpoint_mode(opts, False):
            return False
        if opts.effect or not opts.deterministic or opts.retry_exceptions or {task_id, node.task.name} & self.awaited:
            return False
        return all(graph.nodes[d].options.effect != "idempotent" for d in graph.downstream(task_id))

    def _await(self, names: set[str]) -> None:
        """Tasks now named by a wait_until_committed must be tracked; one already running
        untracked (a continuation named it) gets a probe that reports when it ends."""
        self.awaited |= names
        for name in names:
            for task_id in self._named((name,)):
                run = self.tasks[task_id]
                if not run.tracked:
                    run.tracked = True
                    if run.phase == "running":
                        self._watch(executor.probe.remote(run.value), task_id, "probe")

    def _set_phase(self, run: TaskRun, phase: str) -> None:
        """Every phase change passes here, keeping the waiting/finished sets exact."""
        old, run.phase = run.phase, phase
        for name, members in (("waiting", self.waiting), ("finished", self.finished)):
            if old == name and phase != name:
                del members[run.task_id]
            elif phase == name and old != name:
                members[run.task_id] = None
        self.fresh = self.fresh or phase == "finished"
        if phase == "durable" and old != "durable":
            self.open_tasks -= 1
        elif old == "durable" and phase != "durable":  # run again (its output held a lost actor)
            self.open_tasks += 1

    def _recover(self, run: TaskRun) -> None:
        ckpt = self.snapshot.checkpoints[run.task_id]
        if self.snapshot.state(run.task_id) == "continued":
            self._set_phase(run, "durable")
            self._expand(run, self._read_checkpoint(ckpt))
        elif ckpt.inline is not None:
            try:
                value = blobs.loads(ckpt.inline)
            except Exception as exc:  # e.g. a handle to an actor of a dead job: no usable checkpoint
                self._on_load(run, {"ok": False, "reason": f"it does not unpickle here ({type(exc).__name__}: {exc})"})
                return
            run.value = ray.put(value)
            self._set_phase(run, "durable")
        else:
            self._set_phase(run, "loading")
            run.value, meta_ref = executor.load.remote(str(self.store.blobs), ckpt.location)
            self._watch(meta_ref, run.task_id, "load")

    def _read_checkpoint(self, ckpt) -> Any:
        if ckpt.inline is not None:
            return blobs.loads(ckpt.inline)
        return blobs.read_file(self.store.blobs / ckpt.location)

    def _expand(self, parent: TaskRun, cont: Continuation) -> None:
        """Graft a continuation's sub-graph under ``<parent>/``."""
        sub = build_graph(cont.node, prefix=f"{parent.task_id}/")
        parent.alias = sub.root
        self.results.add(sub.root)
        known = self.snapshot.defined | set(self.tasks)
        self.batch.new_tasks += [task_row(sub, t, parent.task_id) for t in sub.order() if t not in known]
        self.graph.graft(sub)
        subplan = recovery.plan(self.workflow_id, sub, self.snapshot, self.store.blobs, {sub.root})
        self.plan.labels.update(subplan.labels)
        self.plan.replay |= subplan.replay
        self.batch.plan = self.plan.labels
        self._adopt(sub, subplan)

    # -- the loop ---------------------------------------------------------------------

    def execute(self) -> None:
        """Run until every task is durable, or a task fails, or we are canceled."""
        while True:
            if not self.error:
                self._dispatch_ready()
            if self._finished():
                break
            self._collect()
            if self._commit_due():
                self._commit()
        self._commit()
        if self.error:
            self._take_failed_downstream()

    def _take_failed_downstream(self) -> None:
        """Tasks downstream of a failed one fail at once in Ray (an input is an error): take
        their errors, so Ray does not also log each as "Unhandled error" when it is dropped."""
        failed = [t for t, r in self.tasks.items() if r.phase == "failed"]
        below = set(nx.descendants(self.graph.digraph, failed[0])) if failed else set()
        refs = [ref for ref, (t, _) in self.pending.items() if t in below]
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=1.0, fetch_local=False)
        for ref, outcome in zip(ready, _get_each(ready)):
            if isinstance(outcome, Exception):
                _take_errors([self.tasks[self.pending[ref][0]].value])

    def _finished(self) -> bool:
        # After a failure or a cancel we stop at once, as ray.get does: tasks still
        # running finish on their own and their results are ignored (never committed).
        # We do not ray.cancel them: on Ray 2.60 that races with their replies and can
        # abort the whole driver (RAY_CHECK in task_manager.cc), i.e. kill the kernel.
        return bool(self.error) or (self.open_tasks == 0 and not self.pending)

    def _commit_due(self) -> bool:
        """Group commits: at most every COMMIT_INTERVAL, unless someone waits on durability."""
        if self.batch.intents or self.error or not self.pending or self._durability_wanted():
            return True
        return time.monotonic() - self.last_commit >= COMMIT_INTERVAL

    def _durability_wanted(self) -> bool:
        """A task waits only for finished tasks to be durable (an idempotent effect after
        its upstream, a wait_until_committed): committing now saves it the interval."""
        return self.held and self.fresh

    def _dispatch_ready(self) -> None:
        self.held = False
        for task_id in list(self.waiting):
            run = self.tasks[task_id]
            if run.phase != "waiting" or not self._ready(run):
                continue
            if isinstance(run.node, EventNode):
                self._deliver_event(run)
            elif run.options.effect == "idempotent" and not run.intent_durable:
                if (task_id, self._key(task_id)) not in self.batch.intents:
                    self.batch.intents.append((task_id, self._key(task_id)))
            else:
                self._submit(run)

    def _ready(self, run: TaskRun) -> bool:
        ups = self.graph.upstream(run.task_id)
        if isinstance(run.node, EventNode):
            return True
        if any(self._value(u) is None for u in ups):
            return False
        strict = run.options.effect == "idempotent"
        ready = (not strict or all(self._durable(u) for u in ups)) and all(
            self._durable(t) for t in self._named(run.options.wait_until_committed))
        self.held = self.held or not ready
        return ready

    def _named(self, names: tuple[str, ...]) -> list[str]:
        out = []
        for name in names:
            out += [t for t, r in self.tasks.items() if t == name or r.node.task.name == name]
        return out

    def _value(self, task_id: str) -> Any:
        run = self.tasks[task_id]
        if run.alias is not None:
            return self._value(run.alias)
        return run.value if run.phase in ("running", "finished", "durable") else None

    def _durable(self, task_id: str) -> bool:
        run = self.tasks[task_id]
        if run.phase != "durable":
            return False
        return run.alias is None or self._durable(run.alias)

    def _key(self, task_id: str) -> str:
        return TaskContext(self.workflow_id, task_id, 0, None).idempotency_key

    def _submit(self, run: TaskRun) -> None:
        opts = run.options
        refs: list[Any] = []
        args = self._template(run.node.args, refs)
        kwargs = self._template(run.node.kwargs, refs)
        attempt = len(self.snapshot.started.get(run.task_id, ())) + 1
        run.spec = executor.Spec(self.workflow_id, run.task_id, self.run, attempt, args, kwargs,
                                 checkpoint_mode(opts, run.task_id in self.results), opts.effect,
                                 str(self.store.blobs))
        faults.point("dispatch", run.task_id)
        remote = executor.remote_for(run.node.task, run.tracked)
        if run.tracked:
            run.value, meta_ref = remote.remote(run.spec.to_wire(), *refs)
            self._watch(meta_ref, run.task_id, "exec")
        else:
            run.value = remote.remote(run.spec.to_wire(), *refs)
        run.meta, run.persisted = None, None
        self._set_phase(run, "running")

    def _watch(self, ref: Any, task_id: str, kind: str) -> None:
        self.pending[ref] = (task_id, kind)

    def wake(self) -> None:
        """Called from other threads (events, cancel) to make the loop look again."""
        self.wakeup.set()

    def _template(self, obj: Any, refs: list) -> Any:
        if isinstance(obj, Node):
            refs.append(self._value(self.ids[id(obj)]))
            return executor.Slot(len(refs) - 1)
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._template(x, refs) for x in obj)
        if isinstance(obj, dict):
            return {k: self._template(v, refs) for k, v in obj.items()}
        return obj

    def _deliver_event(self, run: TaskRun) -> None:
        payloads = self.store.events(self.workflow_id, [run.node.event_name])
        if run.node.event_name not in payloads:
            return
        value = cloudpickle.loads(payloads[run.node.event_name])
        run.value = ray.put(value)
        run.meta = {"inline": blobs.to_bytes(blobs.dumps_parts(value)), "started": int(time.time() * 1e6)}
        self._set_phase(run, "finished")

    # -- collecting results -----------------------------------------------------------

    def _collect(self) -> None:
        """Wait until the oldest pending refs are all ready or a commit is due; take what is.

        One ``ray.wait`` per loop over a bounded window of refs: cheaper per task
        than a callback per ref, and it never rescans a huge pending set.
        """
        if not self.pending:
            if not self.batch:  # nothing to commit either: wait for an event or a cancel
                self.wakeup.wait(timeout=0.5)
                self.wakeup.clear()
            return  # else commit at once: with nothing running, nothing would join the batch
        refs = list(itertools.islice(self.pending, WAIT_WINDOW))
        timeout = 0.0 if self._durability_wanted() else max(0.0, COMMIT_INTERVAL - (time.monotonic() - self.last_commit))
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=True)
        for ref, outcome in zip(ready, _get_each(ready)):
            task_id, kind = self.pending.pop(ref)
            if isinstance(outcome, Exception):  # the task failed after its retries, or was canceled
                self._failed(task_id, outcome)
                continue
            getattr(self, f"_on_{kind}")(self.tasks[task_id], outcome)
            faults.point("finished", task_id)

    def _on_exec(self, run: TaskRun, meta: dict) -> None:
        if meta.get("deferred"):
            run.value = None
            self._set_phase(run, "waiting")
            self._take_report(meta)
            return
        self._untracked_done(run.task_id)
        run.meta = meta
        if meta.get("continuation"):
            self._set_phase(run, "finished")
            self._expand(run, self._read_checkpoint_meta(meta))
        elif meta.get("persist"):  # async and large: write it off the critical path
            self._watch(executor.persist.remote(run.value, run.spec.to_wire()), run.task_id, "persist")
        else:
            self._set_phase(run, "finished")

    def _on_probe(self, run: TaskRun, meta: dict) -> None:
        if meta.get("deferred"):
            self._take_report(meta)
        elif run.phase == "running":  # a report from downstream may have come first
            self._untracked_done(run.task_id)
            self._untracked_finished(run)

    def _untracked_done(self, task_id: str) -> None:
        """``task_id`` ran on real inputs, so the untracked tasks upstream of it have ended."""
        stack = list(self.graph.upstream(task_id))
        while stack:
            run = self.tasks[stack.pop()]
            if not run.tracked and run.phase == "running":
                self._untracked_finished(run)
                stack.extend(self.graph.upstream(run.task_id))

    def _untracked_finished(self, run: TaskRun) -> None:
        run.meta = {"writes": [], "started": None}  # when it started, only the start log knows
        self._set_phase(run, "finished")

    def _take_report(self, meta: dict) -> None:
        """What a deferred task learned about untracked tasks upstream: continuations they
        returned (expanded here, as a tracked task's own report would be), and which of
        them passed a placeholder on (they run again, with the continuation's value)."""
        for task_id, cont in meta.get("continued", ()):
            run = self.tasks[task_id]
            if run.phase == "running":  # not expanded yet
                self._untracked_done(task_id)
                run.meta = cont
                self._set_phase(run, "finished")
                self._expand(run, self._read_checkpoint_meta(cont))
        for task_id in meta.get("via", ()):
            run = self.tasks[task_id]
            if run.phase == "running":
                run.value = None
                self._set_phase(run, "waiting")

    def _on_persist(self, run: TaskRun, meta: dict) -> None:
        if meta.get("deferred"):
            return
        run.persisted = meta
        self._set_phase(run, "finished")

    def _on_load(self, run: TaskRun, meta: dict) -> None:
        if meta["ok"]:
            self._set_phase(run, "durable")
            return
        if not run.options.deterministic:
            self._set_error(run.task_id, CheckpointCorruptedError(
                self.workflow_id, run.task_id, str(self.store.blobs), meta["reason"]))
            return
        self.plan.labels[run.task_id] = run.label = recovery.REEXECUTED
        self.plan.replay.add(run.task_id)
        self.batch.plan = self.plan.labels
        run.replay, run.value = True, None
        self._set_phase(run, "waiting")

    def _read_checkpoint_meta(self, meta: dict) -> Continuation:
        if meta.get("inline") is not None:
            return blobs.loads(meta["inline"])
        return blobs.read_file(self.store.blobs / meta["location"])

    def _failed(self, task_id: str, exc: Exception) -> None:
        _take_errors([self.tasks[task_id].value])  # the value holds the same error: taken, not "unhandled"
        if self.error is not None:
            return  # downstream of the first failure: that one is the story
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause else exc
        if isinstance(cause, executor.RaisedIn):  # an untracked task upstream raised: this one never ran
            task_id, cause = cause.task_id, cause.error
        if isinstance(cause, ray.exceptions.RayActorError) and self._remake_actor(task_id, cause):
            return
        self._set_phase(self.tasks[task_id], "failed")
        self.batch.failures.append((task_id, f"{type(cause).__name__}: {cause}"))
        if isinstance(cause, ExoflowError):
            self._set_error(task_id, cause)
        else:
            self._set_error(task_id, WorkflowFailedError(self.workflow_id, task_id, f"{type(cause).__name__}: {cause}"))

    def _remake_actor(self, task_id: str, cause: Exception) -> bool:
        """A task failed because a Ray actor died. If upstream tasks returned that actor
        (their output holds its handle), that output is unusable: run those tasks again
        (deterministic ones only: a nondeterministic one could make a different actor),
        and every task downstream of them that is not durable yet, this one included.
        Returns False if no upstream task holds the actor (an ordinary failure)."""
        actor = actor_id_of(cause)
        holders = self._holders(task_id, actor) if actor else []
        if not holders:
            return False
        for h in holders:
            why = None
            if not self.tasks[h].options.deterministic:
                why = "it is nondeterministic (deterministic=False), so running it again could change its result"
            elif self.remade.get(h, 0) >= max(1, self.tasks[h].options.max_retries):
                why = f"it was already run again {self.remade[h]} time(s) for lost actors (max_retries)"
            if why:
                self._set_phase(self.tasks[task_id], "failed")
                self.batch.failures.append((task_id, f"ActorDiedError: {actor}"))
                self._set_error(task_id, ActorLostError(self.workflow_id, task_id, h, actor, why))
                return True
        below = set(holders)
        for t in self.graph.order():
            if t not in below and any(u in below for u in self.graph.upstream(t)):
                below.add(t)
        # Everything downstream that is not durable saw (or will see) the dead actor: run it
        # again with the new value; what already committed stays committed.
        redo = [t for t in self.graph.order() if t in holders or (t in below and self.tasks[t].phase != "durable")]
        stale = set(redo)
        for ref in [r for r, (t, _) in self.pending.items() if t in stale]:
            del self.pending[ref]  # an old execution's late report is ignored
        for t in redo:
            run = self.tasks[t]
            if t in holders:
                self.remade[t] = self.remade.get(t, 0) + 1
                run.replay = run.replay or run.phase == "durable"  # committed: its rows are in already
                self.plan.labels[t] = run.label = recovery.REEXECUTED
                self.batch.plan = self.plan.labels
                blobs.blob_path(self.store.blobs, self.workflow_id, t, self.run).unlink(missing_ok=True)
            run.value, run.meta, run.persisted = None, None, None
            self._set_phase(run, "waiting")
        return True

    def _holders(self, task_id: str, actor: str) -> list[str]:
        """Upstream tasks (transitively) whose output holds a handle to ``actor``."""
        seen, stack, found = set(), list(self.graph.upstream(task_id)), []
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            stack.extend(self.graph.upstream(t))
            ref = self._value(t)
            if ref is None:
                continue
            try:
                value = ray.get(ref, timeout=60)
            except Exception:  # an upstream that failed too (it may have used the same actor)
                continue
            if actor in actors_in(value):
                found.append(t)
        return [t for t in self.graph.order() if t in found]

    def _set_error(self, task_id: str, error: ExoflowError) -> None:
        if self.error is None:
            self.error = error

    def cancel(self) -> None:
        self.canceled = True
        self.error = self.error or WorkflowCanceledError(self.workflow_id)
        self.wake()

    # -- committing --------------------------------------------------------------------

    def _commit(self) -> None:
        self.fresh = False
        committing: dict[str, None] = {}
        for task_id in sorted(self.finished, key=self.position.__getitem__):
            if all(u in committing or self._durable(u) for u in self._commit_deps(task_id)):
                committing[task_id] = None
                self.batch.commits.append(self._commit_record(self.tasks[task_id]))
        self.last_commit = time.monotonic()
        if not self.batch:
            return
        batch, self.batch = self.batch, commit.Batch()
        refused = dict(commit.apply(self.store, self.workflow_id, self.run, batch))
        for task_id in committing:
            self._set_phase(self.tasks[task_id], "failed" if task_id in refused else "durable")
        for task_id, _ in batch.intents:
            self.tasks[task_id].intent_durable = True
        for task_id, reason in refused.items():
            self._set_error(task_id, WorkflowFailedError(self.workflow_id, task_id, reason))

    def _commit_deps(self, task_id: str) -> list[str]:
        deps = []
        for u in self.graph.upstream(task_id):
            while u is not None:
                deps.append(u)
                u = self.tasks[u].alias
        return deps

    def _commit_record(self, run: TaskRun) -> commit.Commit:
        meta = dict(run.meta)
        if run.persisted:
            meta.update(run.persisted)
        if meta.get("continuation"):
            state = "continued"
        else:
            state = "committed" if checkpoint_mode(run.options, run.task_id in self.results) else "done"
        key = self._key(run.task_id) if run.options.effect == "idempotent" else None
        return commit.Commit(run.task_id, state, meta, run.options.effect, key, apply_writes=not run.replay)

    def root_value(self) -> Any:
        return self._value(self.graph.root)

    def release(self) -> None:
        """Let go of every ObjectRef this run holds (the run is over)."""
        for run in self.tasks.values():
            run.value = None
        self.pending.clear()


def actor_id_of(error: Exception) -> str | None:
    """The hex id of the actor a RayActorError is about (its message has it when the
    attribute was lost on the way between processes)."""
    actor = getattr(error, "actor_id", None)
    if actor:
        return actor if isinstance(actor, str) else actor.hex()
    match = re.search(r"actor_id: ([0-9a-f]+)", str(error))
    return match.group(1) if match else None


def actors_in(value: Any) -> set[str]:
    """Hex ids of the Ray actors whose handles ``value`` holds (a pickling pass that
    leaves big buffers where they are)."""
    found: set[str] = set()

    class Finder(cloudpickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, ray.actor.ActorHandle):
                found.add(obj._actor_id.hex())
                return "actor"
            return None

    try:
        Finder(io.BytesIO(), protocol=5, buffer_callback=lambda buf: False).dump(value)
    except Exception:
        pass
    return found


def _take_errors(refs: list) -> None:
    """Get refs that hold errors, ignoring them: the workflow's own error tells the story,
    and Ray would otherwise log each one as "Unhandled error" when it is dropped."""
    for ref in refs:
        if ref is None:
            continue
        try:
            ray.get(ref, timeout=0)
        except Exception:
            pass


def _get_each(refs: list) -> list:
    """Values of ready refs, one ``ray.get`` for all unless one of them failed."""
    try:
        return ray.get(refs)
    except Exception:
        out = []
        for ref in refs:
            try:
                out.append(ray.get(ref))
            except Exception as exc:
                out.append(exc)
        return out
