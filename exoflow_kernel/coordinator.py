"""The coordinator: one loop per running workflow, in the driver.

It keeps Ray busy and DuckDB cheap at the same time:

* **dispatch** a task as soon as its upstream *values* exist as ObjectRefs, so
  Ray chains tasks without waiting on us; only tasks that must not start early
  wait here: idempotent effects (intent durable, upstream committed first),
  ``wait_until_committed``, events, and values still being verified on load;
* **collect** the small meta results of finished tasks with ``ray.wait``;
* **commit** every finished task whose upstream is durable, in one grouped
  transaction (:mod:`commit`), in topological order: so no downstream effect
  is ever durable before the checkpoints it depends on.

Continuations are expanded here: a task that returned ``exo.continuation(n)``
commits at once, its sub-graph joins the run under ``<task>/`` ids, and tasks
that had already received its placeholder report ``deferred`` and are
dispatched again with the real value.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import ray

from . import blobs, commit, executor, faults, recovery
from .context import TaskContext
from .dag import Continuation, EventNode, Graph, Node, build_graph
from .errors import CheckpointCorruptedError, ExoflowError, WorkflowCanceledError, WorkflowFailedError
from .store import Store

_live: dict[tuple[str, str], "Coordinator"] = {}
_live_lock = threading.Lock()


def live_workflows(store: Store) -> list[str]:
    with _live_lock:
        return [wf for (root, wf) in _live if root == str(store.root)]


def live(store: Store, workflow_id: str) -> "Coordinator | None":
    with _live_lock:
        return _live.get((str(store.root), workflow_id))


def notify_event(store: Store, workflow_id: str) -> None:
    coordinator = live(store, workflow_id)
    if coordinator is not None:
        coordinator.wake.set()


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
    order: list[str] = field(default_factory=list)
    ids: dict[int, str] = field(default_factory=dict)
    pending: dict[Any, tuple[str, str]] = field(default_factory=dict)
    batch: commit.Batch = field(default_factory=commit.Batch)
    error: ExoflowError | None = None
    canceled: bool = False
    wake: threading.Event = field(default_factory=threading.Event)

    # -- set-up -------------------------------------------------------------------

    def __post_init__(self) -> None:
        self._adopt(self.graph, self.plan)

    def _adopt(self, graph: Graph, plan: recovery.Plan) -> None:
        """Make the tasks of ``graph`` part of this run, as ``plan`` labels them."""
        self.ids.update(graph.ids)
        for task_id in graph.order():
            if task_id in self.tasks:
                continue
            run = TaskRun(task_id, graph.nodes[task_id], plan.labels[task_id], replay=task_id in plan.replay)
            run.intent_durable = task_id in self.snapshot.intents
            self.tasks[task_id] = run
            self.order.append(task_id)
            if run.label == recovery.SKIPPED:
                run.phase = "durable"
            elif run.label == recovery.RECOVERED:
                self._recover(run)

    def _recover(self, run: TaskRun) -> None:
        ckpt = self.snapshot.checkpoints[run.task_id]
        run.phase = "durable"
        if self.snapshot.state(run.task_id) == "continued":
            self._expand(run, self._read_checkpoint(ckpt))
        elif ckpt.inline is not None:
            run.value = ray.put(blobs.loads(ckpt.inline))
        else:
            run.phase = "loading"
            run.value, meta_ref = executor.load.remote(str(self.store.blobs), ckpt.location)
            self.pending[meta_ref] = (run.task_id, "load")

    def _read_checkpoint(self, ckpt) -> Any:
        if ckpt.inline is not None:
            return blobs.loads(ckpt.inline)
        return blobs.read_file(self.store.blobs / ckpt.location)

    def _expand(self, parent: TaskRun, cont: Continuation) -> None:
        """Graft a continuation's sub-graph under ``<parent>/``."""
        sub = build_graph(cont.node, prefix=f"{parent.task_id}/")
        parent.alias = sub.root
        new = [t for t in sub.order() if t not in self.tasks]
        known = set(self.snapshot.states)
        self.batch.new_tasks += [task_row(sub, t, parent.task_id) for t in new if t not in known]
        for t in sub.order():  # keep the shared graph complete for the planner and the picture
            self.graph.nodes.setdefault(t, sub.nodes[t])
        self.graph.digraph.add_edges_from(sub.digraph.edges)
        self.graph.digraph.add_nodes_from(sub.digraph.nodes)
        subplan = recovery.plan(self.workflow_id, sub, self.snapshot, self.store.blobs, {sub.root})
        self.plan.labels.update(subplan.labels)
        self.plan.replay |= subplan.replay
        self.batch.plan = self.plan.labels
        self._adopt(sub, subplan)

    # -- the loop ---------------------------------------------------------------------

    def execute(self) -> None:
        """Run until every task is durable, or a task fails, or we are canceled."""
        while True:
            if not self.error and not self.canceled:
                self._dispatch_ready()
            if self._finished():
                break
            self._collect()
            self._commit()
        self._commit()

    def _finished(self) -> bool:
        if self.error or self.canceled:
            return not self.pending
        return all(t.phase == "durable" for t in self.tasks.values()) and not self.pending

    def _dispatch_ready(self) -> None:
        for task_id in self.order:
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
        if strict and not all(self._durable(u) for u in ups):
            return False
        return all(self._durable(t) for t in self._named(run.options.wait_until_committed))

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
        spec = executor.Spec(self.workflow_id, run.task_id, self.run, attempt, args, kwargs,
                             opts.checkpoint, opts.effect, str(self.store.blobs))
        remote = executor.remote_for(run.node.task.func, opts.max_retries, opts.retry_exceptions, opts.ray_options)
        faults.point("dispatch", run.task_id)
        run.value, meta_ref = remote.remote(spec, *refs)
        self.pending[meta_ref] = (run.task_id, "exec")
        if opts.checkpoint == "async":
            self.pending[executor.persist.remote(run.value, spec)] = (run.task_id, "persist")
        run.phase, run.meta, run.persisted = "running", None, None

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
        run.phase = "finished"

    # -- collecting results -----------------------------------------------------------

    def _collect(self) -> None:
        if not self.pending:
            self.wake.wait(timeout=0.5 if not self.batch else 0)
            self.wake.clear()
            return
        refs = list(self.pending)
        ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            task_id, kind = self.pending.pop(ref)
            try:
                meta = ray.get(ref)
            except Exception as exc:  # the task failed after its retries, or was canceled
                self._failed(task_id, exc)
                continue
            getattr(self, f"_on_{kind}")(self.tasks[task_id], meta)
            faults.point("finished", task_id)

    def _on_exec(self, run: TaskRun, meta: dict) -> None:
        if meta.get("deferred"):
            run.phase, run.value = "waiting", None
            return
        run.meta = meta
        if meta.get("continuation"):
            run.phase = "finished"
            self._expand(run, self._read_checkpoint_meta(meta))
        elif run.options.checkpoint != "async" or run.persisted is not None:
            run.phase = "finished"

    def _on_persist(self, run: TaskRun, meta: dict) -> None:
        if meta.get("deferred"):
            return
        run.persisted = meta
        if run.meta is not None and run.phase == "running":
            run.phase = "finished"

    def _on_load(self, run: TaskRun, meta: dict) -> None:
        if meta["ok"]:
            run.phase = "durable"
            return
        if not run.options.deterministic:
            self._set_error(run.task_id, CheckpointCorruptedError(
                self.workflow_id, run.task_id, str(self.store.blobs), meta["reason"]))
            return
        self.plan.labels[run.task_id] = run.label = recovery.REEXECUTED
        self.plan.replay.add(run.task_id)
        self.batch.plan = self.plan.labels
        run.replay, run.phase, run.value = True, "waiting", None

    def _read_checkpoint_meta(self, meta: dict) -> Continuation:
        if meta.get("inline") is not None:
            return blobs.loads(meta["inline"])
        return blobs.read_file(self.store.blobs / meta["location"])

    def _failed(self, task_id: str, exc: Exception) -> None:
        if self.error is not None or isinstance(exc, ray.exceptions.TaskCancelledError):
            return  # downstream of the first failure, or stopped on purpose
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause else exc
        self.tasks[task_id].phase = "failed"
        self.batch.failures.append((task_id, f"{type(cause).__name__}: {cause}"))
        if isinstance(cause, ExoflowError):
            self._set_error(task_id, cause)
        else:
            self._set_error(task_id, WorkflowFailedError(self.workflow_id, task_id, f"{type(cause).__name__}: {cause}"))

    def _set_error(self, task_id: str, error: ExoflowError) -> None:
        if self.error is None:
            self.error = error
            self._cancel_in_flight()

    def cancel(self) -> None:
        self.canceled = True
        self.error = self.error or WorkflowCanceledError(self.workflow_id)
        self._cancel_in_flight()
        self.wake.set()

    def _cancel_in_flight(self) -> None:
        for run in self.tasks.values():
            if run.phase == "running" and run.value is not None:
                try:
                    ray.cancel(run.value)
                except Exception:  # already finished or gone: nothing to stop
                    pass

    # -- committing --------------------------------------------------------------------

    def _commit(self) -> None:
        committing = []
        for task_id in self.order:
            run = self.tasks[task_id]
            if run.phase == "finished" and all(self._durable(u) or u in committing for u in self._commit_deps(task_id)):
                committing.append(task_id)
                self.batch.commits.append(self._commit_record(run))
        if not self.batch:
            return
        batch, self.batch = self.batch, commit.Batch()
        refused = commit.apply(self.store, self.workflow_id, self.run, batch)
        for task_id in committing:
            self.tasks[task_id].phase = "durable"
        for task_id, _ in batch.intents:
            self.tasks[task_id].intent_durable = True
        for task_id, reason in refused:
            self.tasks[task_id].phase = "failed"
            self._set_error(task_id, WorkflowFailedError(self.workflow_id, task_id, reason))
        if batch.intents:
            self.wake.set()

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
            state = "committed" if run.options.checkpoint else "done"
        key = self._key(run.task_id) if run.options.effect == "idempotent" else None
        return commit.Commit(run.task_id, state, meta, run.options.effect, key, apply_writes=not run.replay)

    def root_value(self) -> Any:
        return self._value(self.graph.root)


def task_row(graph: Graph, task_id: str, parent: str | None = None) -> tuple:
    """Static description of a task, as stored in ``exoflow.tasks``."""
    opts = graph.nodes[task_id].options
    checkpoint = opts.checkpoint if opts.checkpoint else "off"
    return (task_id, graph.nodes[task_id].task.name, checkpoint, opts.deterministic, opts.effect,
            graph.upstream(task_id), parent)


def register(coordinator: Coordinator) -> None:
    with _live_lock:
        _live[(str(coordinator.store.root), coordinator.workflow_id)] = coordinator


def unregister(coordinator: Coordinator) -> None:
    with _live_lock:
        _live.pop((str(coordinator.store.root), coordinator.workflow_id), None)
