"""The verbs: everything ``exo.*`` exposes. Thin: each checks its input, then
hands over to the store, the planner and the coordinator.

Ray (and the coordinator and executor, which need it) is imported only when a
workflow runs, and cloudpickle and concurrent.futures only where they are needed:
looking at a store (``status``, ``lineage``, the CLI) costs a DuckDB query, not
Ray's multi-second import."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple

from . import blobs, commit, recovery
from . import context as _context
from .dag import (
    Continuation, EventNode, Graph, Node, TaskFunction, TaskOptions, build_graph, flatten, task_row, unflatten,
)
from .render import render
from .errors import (
    CheckpointCorruptedError, EventError, InvalidOptionError, TaskNotFoundError, UnpicklableWorkflowError,
    WorkflowCanceledError, WorkflowExistsError, WorkflowLiveError, WorkflowNotFinishedError,
)
from .running import live, live_workflows, notify_event, register, unregister
from .store import Store

if TYPE_CHECKING:
    import concurrent.futures

_ID = re.compile(r"^[A-Za-z0-9_.:@+=-]{1,200}$")
_lock = threading.RLock()
_store: Store | None = None
_ray_address: str | None = None


class TaskRecord(NamedTuple):
    """One task's lineage, as ``exo.lineage`` and ``exoflow lineage --json`` give it."""

    task_id: str
    name: str
    state: str
    attempts: int
    checkpoint: str
    effect: str | None
    started_at: Any
    finished_at: Any
    output_bytes: int | None


# -- set-up -------------------------------------------------------------------------


def init(store: str | os.PathLike | None = None, *, ray_address: str | None = None) -> Store:
    """Open (or switch to) a store; Ray starts on the first run, or joins ``ray_address``
    (default ``$EXOFLOW_RAY_ADDRESS``; with neither, a local Ray of our own is started)."""
    return open_store(store, ray_address=ray_address)


def store_path(store: str | os.PathLike | None = None) -> Path:
    """The store directory: the argument, else $EXOFLOW_STORE, else ./.exoflow."""
    return Path(store or os.environ.get("EXOFLOW_STORE") or ".exoflow").expanduser().absolute()


def open_store(store: str | os.PathLike | None = None, *, ray_address: str | None = None,
               role: str = "writer") -> Store:
    """``init`` with a role: a short-lived "reader" (the CLI) yields to writers."""
    global _store, _ray_address
    root = store_path(store)
    with _lock:
        _ray_address = ray_address or _ray_address
        if _store is not None and _store.root == root:
            return _store
        if _store is not None and live_workflows(_store):
            close()  # refused: a workflow of this process runs on the current store
        new = Store(root, role=role)  # a bad path fails here, and the current store stays open
        close()
        _store = new
        _store.live = lambda: live_workflows(_store)
        _store.on_event = lambda wf, s=_store: notify_event(s, wf)
        return _store


def close() -> None:
    """Let go of the store (DuckDB file and owner socket) so another process can own it.
    Refused while a workflow of this process runs on it."""
    global _store
    with _lock:
        if _store is not None:
            busy = live_workflows(_store)
            if busy:
                raise WorkflowLiveError(busy[0], "this process", str(_store.root))
            _store.close()
            _store = None


def shutdown() -> None:
    """The process is about to exit (a kernel asked to shut down): let go of the store and
    stop the local Ray we started, so nothing has to be killed after us. A workflow still
    running here is left exactly as a crash would leave it: resumable, its Ray untouched."""
    with _lock:
        if _store is not None and live_workflows(_store):
            return
        close()
    if "exoflow_kernel.executor" in sys.modules:  # never import Ray just to stop it
        sys.modules["exoflow_kernel.executor"].stop_ray()


def _current_store() -> Store:
    return _store if _store is not None else init()


def _ensure_ray(store: Store) -> None:
    from . import executor

    started = executor.ensure_ray(_ray_address or os.environ.get("EXOFLOW_RAY_ADDRESS") or None)
    # Again on later runs: Ray's agents may have started after ray.init returned.
    store.refresh_leftovers(at_most_every=0.0 if started else 2.0)


def task(func: Callable | None = None, *, name: str | None = None, checkpoint: str | bool = "sync",
         deterministic: bool = True, effect: str | None = None, max_retries: int = 3,
         retry_exceptions: bool | tuple = False, wait_until_committed: tuple[str, ...] = (),
         **ray_options: Any) -> Any:
    """Decorate a function as a workflow task (``@exo.task`` or ``@exo.task(...)``)."""
    options = TaskOptions(name, checkpoint, deterministic, effect, max_retries, retry_exceptions,
                          wait_until_committed, ray_options)
    if func is None:
        return lambda f: TaskFunction(f, options)
    return TaskFunction(func, options)


def context() -> _context.TaskContext:
    """Inside a task: its workflow_id, task_id, attempt, idempotency_key and ``write``."""
    return _context.current()


def continuation(node: Node) -> Continuation:
    """Return this from a task to make its value that of ``node``'s sub-workflow."""
    return Continuation(node)


def wait_for_event(name: str) -> EventNode:
    """A node whose value is the payload of event ``name`` (see ``send_event``)."""
    return EventNode(name)


# -- running ------------------------------------------------------------------------


def run(node: Node, workflow_id: str | None = None, *, changed: Iterable[str] | None = None) -> Any:
    """Run a workflow to its result; the same id again returns the stored result.

    ``changed`` is for tools that edit a workflow as it grows (the notebook):
    with it, the same id may come with a different graph (new tasks join, the
    stored graph is replaced), and the task ids listed run again even if they
    committed, with everything downstream of them (shown as "stale").
    """
    return run_async(node, workflow_id, changed=changed).result()


def run_async(node: Node, workflow_id: str | None = None, *,
              changed: Iterable[str] | None = None) -> concurrent.futures.Future:
    """Start a workflow in the background; ``.result()`` waits for its value."""
    store = _current_store()
    if not isinstance(node, Node):
        raise InvalidOptionError("node", node, "a node made with task.bind(...)")
    if workflow_id is None:
        workflow_id = f"{node.task.name}-{uuid.uuid4().hex[:8]}"
    _check_id(workflow_id)
    graph = build_graph(node)
    with _lock:
        store.require_owner(workflow_id)
        exists = store.exists(workflow_id)
        if exists and changed is None:
            _check_same_graph(store, workflow_id, graph)
            return _continue(store, workflow_id, graph)
        stored = (graph.root, _pickle_graph(workflow_id, graph), [task_row(graph, t) for t in graph.order()])
        if not exists:
            return _start(store, workflow_id, graph, new=stored)
        _check_not_live(store, workflow_id)
        commit.replace_graph(store, workflow_id, *stored)
        return _start(store, workflow_id, graph, stale=set(changed))


def _pickle_graph(workflow_id: str, graph: Graph) -> bytes:
    try:
        return blobs.dumps(flatten(graph))[0]
    except Exception as exc:
        raise UnpicklableWorkflowError(workflow_id, f"{type(exc).__name__}: {exc}") from None


def stored_graph(workflow_id: str):
    """The graph a workflow was last run with, as ``resume`` rebuilds it (for tools)."""
    return build_graph(unflatten(pickle.loads(_current_store().workflow(_check_id(workflow_id))[2])))


def resume(workflow_id: str) -> Any:
    """Carry on a workflow after a crash, a failure or a cancel; return its result."""
    _check_id(workflow_id)
    store = _current_store()
    with _lock:
        store.workflow(workflow_id)
        _check_not_live(store, workflow_id)
        future = _continue(store, workflow_id, stored_graph(workflow_id))
    return future.result()


def _continue(store: Store, workflow_id: str, graph) -> concurrent.futures.Future:
    _check_not_live(store, workflow_id)
    if store.workflow(workflow_id)[0] == "SUCCESSFUL":
        future = _future()
        future.set_result(output(workflow_id))
        return future
    return _start(store, workflow_id, graph)


def _start(store: Store, workflow_id: str, graph, new: tuple | None = None,
           stale: set[str] = frozenset()) -> concurrent.futures.Future:
    """Plan (a new workflow: everything pending), record the run, start the coordinator."""
    _ensure_ray(store)
    if new is None:
        snap = recovery.Snapshot.read(store, workflow_id)
        plan = recovery.plan(workflow_id, graph, snap, store.blobs, {graph.root}, stale)
        run_no = store.next_run(workflow_id)
    else:
        snap, run_no = recovery.Snapshot.empty(), 1
        plan = recovery.Plan(labels=dict.fromkeys(graph.nodes, recovery.PENDING))
    commit.start_run(store, workflow_id, run_no, plan.labels, new)
    from .coordinator import Coordinator

    coordinator = Coordinator(store, workflow_id, graph, run_no, snap, plan)
    register(coordinator)
    future = _future()
    threading.Thread(target=_drive, args=(coordinator, future), name=f"exoflow-{workflow_id}", daemon=True).start()
    return future


def _future() -> concurrent.futures.Future:
    import concurrent.futures  # not at the top: only running a workflow needs it

    return concurrent.futures.Future()


def _drive(coordinator, future: concurrent.futures.Future) -> None:
    import ray

    store, wf = coordinator.store, coordinator.workflow_id
    try:
        coordinator.execute()
        if coordinator.error is None:
            value = ray.get(coordinator.root_value())
            commit.finish_run(store, wf, "SUCCESSFUL", None)
        else:
            status_ = "CANCELED" if coordinator.canceled else "FAILED"
            commit.finish_run(store, wf, status_, str(coordinator.error))
    except BaseException as exc:  # the loop itself broke: leave the workflow resumable
        _retire(coordinator)
        future.set_exception(exc)
        return
    _retire(coordinator)
    if coordinator.error is None:
        future.set_result(value)
    else:
        future.set_exception(coordinator.error)


def _retire(coordinator) -> None:
    """Unregister the run and drop its ObjectRefs *before* the caller wakes up: freed later,
    by this thread, they could race a ``ray.shutdown()`` the caller makes next, and Ray
    aborts a process that touches its core worker after shutdown (seen with 20k refs)."""
    unregister(coordinator)
    coordinator.release()


def _check_id(workflow_id: Any) -> str:
    if not isinstance(workflow_id, str) or not _ID.match(workflow_id):
        raise InvalidOptionError("workflow_id", workflow_id,
                                 "1-200 letters, digits or _ . : @ + = - (no spaces or slashes)")
    return workflow_id


def _check_same_graph(store: Store, workflow_id: str, graph) -> None:
    stored = {row[0] for row in store.task_rows(workflow_id) if row[6] is None}
    if stored != set(graph.nodes):
        extra = sorted(set(graph.nodes) ^ stored)[:5]
        raise WorkflowExistsError(workflow_id, f"tasks differ: {', '.join(extra)}")


def _check_not_live(store: Store, workflow_id: str) -> None:
    if live(store, workflow_id) is not None:
        raise WorkflowLiveError(workflow_id, f"this process, pid {os.getpid()}", str(store.root))
    if store.mode == "remote":
        raise WorkflowLiveError(workflow_id, store.owner.describe(), str(store.root))


# -- looking -------------------------------------------------------------------------


def status(workflow_id: str) -> str:
    """RUNNING, SUCCESSFUL, FAILED, RESUMABLE (its owner died) or CANCELED."""
    _check_id(workflow_id)
    store = _current_store()
    stored = store.workflow(workflow_id)[0]
    return _effective_status(store, workflow_id, stored)


def _effective_status(store: Store, workflow_id: str, stored: str) -> str:
    if stored not in ("RUNNING", "PENDING"):
        return stored
    running_here = live(store, workflow_id) is not None
    running_there = store.mode == "remote" and workflow_id in store.query_live()
    return "RUNNING" if running_here or running_there else "RESUMABLE"


def list_workflows(status: str | None = None) -> list[tuple[str, str]]:
    """[(workflow_id, status), ...], optionally only those with ``status``."""
    store = _current_store()
    rows = [(wf, _effective_status(store, wf, st)) for wf, st in store.list_workflows()]
    return [r for r in rows if status is None or r[1] == status]


def output(workflow_id: str, task: str | None = None) -> Any:
    """The committed output of a task (default: the workflow's result)."""
    _check_id(workflow_id)
    store = _current_store()
    _, root, _, _ = store.workflow(workflow_id)
    task_id = _find_task(store, workflow_id, task) if task is not None else root
    checkpoints = store.checkpoints(workflow_id)
    states = store.latest_states(workflow_id)
    while True:
        ckpt = checkpoints.get(task_id)
        if ckpt is None:
            raise WorkflowNotFinishedError(workflow_id, task_id, states.get(task_id, ("pending",))[0])
        value = _read(workflow_id, task_id, store, ckpt)
        if not isinstance(value, Continuation):
            return value
        task_id = build_graph(value.node, prefix=f"{task_id}/").root


def _read(workflow_id: str, task_id: str, store: Store, ckpt) -> Any:
    try:
        if ckpt.inline is not None:
            return blobs.loads(ckpt.inline)
        return blobs.read_file(store.blobs / ckpt.location)
    except blobs.BlobUnreadable as exc:
        raise CheckpointCorruptedError(workflow_id, task_id, str(store.blobs), str(exc),
                                       why="it cannot be read back here") from None
    except Exception as exc:  # whole, but it does not unpickle here (e.g. a handle to an actor of a dead job)
        raise CheckpointCorruptedError(workflow_id, task_id, str(store.blobs),
                                       f"it does not unpickle here ({type(exc).__name__}: {exc})",
                                       why="it cannot be read back here") from None


def _find_task(store: Store, workflow_id: str, task: str) -> str:
    rows = store.task_rows(workflow_id)
    for row in rows:
        if row[0] == task:
            return task
    for row in rows:
        if row[1] == task:
            return row[0]
    raise TaskNotFoundError(workflow_id, task, [r[0] for r in rows])


def lineage(workflow_id: str) -> list[TaskRecord]:
    """One record per task: state (recovery-aware), attempts, timing, output size."""
    _check_id(workflow_id)
    return [TaskRecord(*r) for r in _current_store().lineage(workflow_id, status(workflow_id) == "RUNNING")]


def state_counts(workflow_id: str) -> dict[str, int]:
    """How many tasks are in each state of ``lineage`` (counted by the store, not here)."""
    _check_id(workflow_id)
    return _current_store().state_counts(workflow_id, status(workflow_id) == "RUNNING")


def sql(query: str) -> list[tuple]:
    """A read query on the store (your ctx.write tables live in ``main``)."""
    return _current_store().user_sql(query)


def graph(workflow_id: str):
    """A graphviz.Digraph of the workflow, coloured by recovery state, with a legend."""
    return graph_of(workflow_id, lineage(workflow_id))


def graph_of(workflow_id: str, records: list[TaskRecord]):
    """``graph`` drawn from lineage records the caller already holds (a view showing both
    reads the lineage once)."""
    rows = _current_store().task_rows(workflow_id)
    edges = [(up, row[0]) for row in rows for up in (row[5] or [])]
    parents = [(row[6], row[0]) for row in rows if row[6]]
    return render(workflow_id, records, edges, parents)


# -- changing -----------------------------------------------------------------------


def cancel(workflow_id: str) -> None:
    """Stop a running workflow (in-flight tasks are canceled); resume continues it."""
    _check_id(workflow_id)
    store = _current_store()
    status_ = store.workflow(workflow_id)[0]
    coordinator = live(store, workflow_id)
    if coordinator is not None:
        coordinator.cancel()
    elif status_ in ("RUNNING", "PENDING", "FAILED"):
        store.require_owner(workflow_id)
        commit.finish_run(store, workflow_id, "CANCELED", str(WorkflowCanceledError(workflow_id)))


def delete(workflow_id: str) -> None:
    """Remove a workflow, its lineage and its checkpoints (not rows it wrote)."""
    _check_id(workflow_id)
    store = _current_store()
    store.workflow(workflow_id)
    _check_not_live(store, workflow_id)
    store.delete(workflow_id)
    shutil.rmtree(blobs.blob_path(store.blobs, workflow_id, "x", 0).parent, ignore_errors=True)


def send_event(workflow_id: str, name: str, payload: Any = None) -> bool:
    """Deliver an event durably; a resumed workflow never waits for it again."""
    _check_id(workflow_id)
    EventNode(name)  # validates the name
    try:
        data = blobs.dumps(payload)[0]
    except Exception as exc:
        raise EventError(workflow_id, name, f"the payload does not pickle ({type(exc).__name__}: {exc})") from None
    return _current_store().send_event(workflow_id, name, data)
