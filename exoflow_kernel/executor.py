"""The Ray side: what runs in workers, and starting or joining Ray.

Each task runs as one Ray task with two returns: its *value* (handed to
downstream tasks as an ObjectRef, never through the driver) and a small *meta*
dict the coordinator waits on to commit (checkpoint location or inline bytes,
transactional rows); an untracked task (:func:`run_untracked`) has the value
only. A sync checkpoint is written here, by the worker that
made the value, before the task returns; an async one by a separate Ray task
(:func:`persist`) that runs off the critical path; a recovered value is read
back by :func:`load`, also in a worker.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psutil
import ray

from . import blobs
from .context import TaskContext, activate, deactivate
from .dag import Continuation, TaskFunction
from .errors import StoreError, UnpicklableOutputError


@dataclass(frozen=True)
class Slot:
    """Placeholder in an argument template for the i-th upstream value."""

    index: int


@dataclass(frozen=True)
class Spec:
    """Everything a worker needs to run one task, besides the function."""

    workflow_id: str
    task_id: str
    run: int
    attempt: int
    args: tuple
    kwargs: dict
    checkpoint: str | bool
    effect: str | None
    blob_root: str

    def to_wire(self) -> tuple:
        """Plain values only, so Ray sends it with msgpack instead of cloudpickle (~5x
        cheaper per task). The argument template travels pickled, or as None in the
        common case where the arguments are exactly the upstream values in order."""
        plain = not self.kwargs and all(isinstance(a, Slot) and a.index == i for i, a in enumerate(self.args))
        template = None if plain else blobs.dumps((self.args, self.kwargs))[0]
        return (self.workflow_id, self.task_id, self.run, self.attempt, template, self.checkpoint,
                self.effect, self.blob_root)

    @classmethod
    def from_wire(cls, wire: tuple, n_values: int) -> "Spec":
        workflow_id, task_id, run, attempt, template, checkpoint, effect, blob_root = wire
        args, kwargs = pickle.loads(template) if template is not None else (tuple(map(Slot, range(n_values))), {})
        return cls(workflow_id, task_id, run, attempt, args, kwargs, checkpoint, effect, blob_root)


@dataclass(frozen=True)
class Deferred:
    """Value of a task that saw a continuation's placeholder: it runs again later.

    An untracked task (:func:`run_untracked`) reports to nobody, so the placeholder
    carries what the coordinator must learn about such tasks from the tracked task
    that does report: ``via``, the untracked tasks it passed through (they run again
    too), and ``continued``, ``(task_id, meta)`` of continuations they returned.
    """

    task_id: str
    via: tuple[str, ...] = ()
    continued: tuple[tuple[str, dict], ...] = ()


def deferred_inputs(values: tuple) -> list[Deferred]:
    return [v for v in values if isinstance(v, Deferred)]


def merged(task_id: str, markers: list[Deferred], via: tuple[str, ...] = ()) -> Deferred:
    """One placeholder for everything ``markers`` say (each task named once)."""
    names = tuple(dict.fromkeys(t for m in markers for t in m.via)) + via
    continued = {t: meta for m in markers for t, meta in m.continued}
    return Deferred(task_id, names, tuple(continued.items()))


class RaisedIn(Exception):
    """What an untracked task raised, with its id: the tracked task downstream, which
    did not run, is the one whose failure the coordinator sees."""

    def __init__(self, task_id: str, error: BaseException) -> None:
        super().__init__(task_id, error)
        self.task_id, self.error = task_id, error


def fill(template: Any, values: tuple) -> Any:
    """Put upstream values into an argument template (nested lists/dicts allowed)."""
    if isinstance(template, Slot):
        return values[template.index]
    if isinstance(template, list):
        return [fill(x, values) for x in template]
    if isinstance(template, tuple):
        return tuple(fill(x, values) for x in template)
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    return template


def run_task(func: Callable, spec: Spec, *values: Any) -> tuple[Any, dict]:
    """Body of every tracked task: run the user's function, checkpoint, report."""
    markers = deferred_inputs(values)
    if markers:
        report = merged(spec.task_id, markers)
        return Deferred(spec.task_id), {"deferred": True, "via": report.via, "continued": report.continued}
    reused = reuse_checkpoint(spec)
    if reused is not None:
        return reused
    started = time.time_ns() // 1000
    ctx = TaskContext(spec.workflow_id, spec.task_id, spec.attempt, spec.effect)
    value = call(func, spec, values, ctx)
    meta: dict = {"writes": ctx.writes, "started": started}
    if isinstance(value, Continuation):
        meta.update(checkpoint_value(value, spec), continuation=True)
        return Deferred(spec.task_id), meta
    if spec.checkpoint:
        meta.update(checkpoint_value(value, spec, to_file=spec.checkpoint == "sync"))
    return value, meta


def run_untracked(func: Callable, spec: Spec, *values: Any) -> Any:
    """Body of an untracked task (``checkpoint=False``, no effect, nothing waits for its
    commit): one Ray return, its value, and no report. Ray tasks cost a third more with a
    second return the coordinator has to wait for; this one's end is known when a tracked
    task downstream of it reports, since Ray runs a task only once its inputs exist."""
    markers = deferred_inputs(values)
    if markers:
        return merged(spec.task_id, markers, via=(spec.task_id,))
    started = time.time_ns() // 1000
    try:
        value = call(func, spec, values, TaskContext(spec.workflow_id, spec.task_id, spec.attempt, None))
    except Exception as exc:
        raise RaisedIn(spec.task_id, exc) from None
    if isinstance(value, Continuation):
        meta = {**checkpoint_value(value, spec), "continuation": True, "writes": [], "started": started}
        return Deferred(spec.task_id, (), ((spec.task_id, meta),))
    note(spec, "ended", f"\t{started}")  # a live graph shows it done before anything downstream reports
    return value


def call(func: Callable, spec: Spec, values: tuple, ctx: TaskContext) -> Any:
    """The user's function with its ``exo.context()``, after noting that it started."""
    note(spec, "started")
    token = activate(ctx)
    try:
        value = func(*fill(spec.args, values), **fill(spec.kwargs, values))
    finally:
        deactivate(token)
    if isinstance(value, ray.ObjectRef):
        value = ray.get(value)  # the engine owns durable values, not a worker that may die
    return value


def reuse_checkpoint(spec: Spec) -> tuple[Any, dict] | None:
    """If this run already wrote this task's blob, return it instead of running again.

    That happens when Ray re-executes a finished task to rebuild a value lost
    with its node (lineage reconstruction) or retries a worker that died after
    writing: the stored value is the one downstream tasks may already have
    seen. Effect tasks always re-run: their rows and keys are not in the blob,
    and their commit (or the receiver's dedup) keeps them exactly once.
    """
    if not spec.checkpoint or spec.effect is not None:
        return None
    path = blobs.blob_path(Path(spec.blob_root), spec.workflow_id, spec.task_id, spec.run)
    try:
        value = blobs.read_file(path)
    except blobs.BlobUnreadable:
        return None
    meta = {"reused": True, "location": os.path.relpath(path, spec.blob_root),
            "size": path.stat().st_size, "checksum": None, "writes": []}
    if isinstance(value, Continuation):
        return Deferred(spec.task_id), {**meta, "continuation": True}
    return value, meta


_log_paths: dict[tuple[str, str, str], Path] = {}  # per worker process: folders made once


def note(spec: Spec, kind: str, extra: str = "") -> None:
    """Append "task, run" to the workflow's start log before the function runs
    (``kind="started"``), or "task, run, started" to its end log after an untracked one
    returns (nothing else records when it ran).

    One small O_APPEND write (no fsync: it only has to survive the driver's
    death, not the machine's), so that after a crash recovery knows which tasks
    really started, without a DuckDB row per dispatch.
    """
    path = _log_paths.get((spec.blob_root, spec.workflow_id, kind))
    if path is None:
        path = blobs.worker_log(Path(spec.blob_root), spec.workflow_id, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        _log_paths[(spec.blob_root, spec.workflow_id, kind)] = path
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{spec.task_id}\t{spec.run}{extra}\n".encode())
    finally:
        os.close(fd)


def checkpoint_value(value: Any, spec: Spec, to_file: bool = True) -> dict:
    """Make a value durable: inline bytes if small, else a blob file.

    With ``to_file=False`` (async checkpoints) a large value is not written
    here but marked ``persist``: the coordinator has :func:`persist` write it
    while downstream tasks already run. A small one costs no more inline than
    a marker would, so it rides with the meta either way.
    """
    try:
        parts = blobs.dumps_parts(value)
    except Exception as exc:
        raise UnpicklableOutputError(spec.workflow_id, spec.task_id, f"{type(exc).__name__}: {exc}") from None
    size = blobs.total_size(parts)
    if size <= blobs.INLINE_LIMIT:
        return {"inline": blobs.to_bytes(parts), "size": size}
    if not to_file:
        return {"persist": True}
    path = blobs.blob_path(Path(spec.blob_root), spec.workflow_id, spec.task_id, spec.run)
    try:
        crc = blobs.write_file(path, parts)
    except OSError as exc:
        raise StoreError(str(Path(spec.blob_root).parent),
                         f"writing the checkpoint of task {spec.task_id!r} of workflow {spec.workflow_id!r} "
                         f"to {path} failed ({exc.strerror or exc})",
                         f"Free space (or fix permissions) there, then exo.resume({spec.workflow_id!r}).") from None
    return {"location": os.path.relpath(path, spec.blob_root), "size": size, "checksum": crc}


@ray.remote
def persist(value: Any, wire: tuple) -> dict:
    """Async checkpoint: write a value that downstream tasks may already be using."""
    if isinstance(value, Deferred):
        return {"deferred": True}
    return checkpoint_value(value, Spec.from_wire(wire, 0))


@ray.remote
def probe(value: Any) -> dict:
    """Report the end of an untracked task that something now waits for (its value is here)."""
    if isinstance(value, Deferred):
        return {"deferred": True, "via": value.via, "continued": value.continued}
    return {}


@ray.remote(num_returns=2)
def load(blob_root: str, location: str) -> tuple[Any, dict]:
    """Read a checkpoint back; report damage instead of failing downstream tasks."""
    try:
        return blobs.read_file(Path(blob_root) / location), {"ok": True}
    except blobs.BlobUnreadable as exc:
        return None, {"ok": False, "reason": str(exc)}
    except Exception as exc:  # whole, but it does not unpickle here (e.g. a handle to an actor of a dead job)
        return None, {"ok": False, "reason": f"it does not unpickle here ({type(exc).__name__}: {exc})"}


_remotes: dict[bool, "weakref.WeakKeyDictionary[TaskFunction, Any]"] = {
    True: weakref.WeakKeyDictionary(), False: weakref.WeakKeyDictionary()}


def remote_for(task: TaskFunction, tracked: bool = True) -> Any:
    """The Ray remote function of a task (tracked: value and meta; else the value only):
    exported once, cheap to call again."""
    remote = _remotes[tracked].get(task)
    if remote is None:
        func, opts, body_of = task.func, task.task_options, run_task if tracked else run_untracked

        def body(wire: tuple, *values: Any) -> Any:
            return body_of(func, Spec.from_wire(wire, len(values)), *values)

        body.__name__ = body.__qualname__ = getattr(func, "__name__", "task")
        # Options given to ray.remote itself are validated once; .options() would redo
        # that on every call (about a third of a submission's cost).
        remote = ray.remote(num_returns=2 if tracked else 1, max_retries=opts.max_retries,
                            retry_exceptions=opts.retry_exceptions, **opts.ray_options)(body)
        _remotes[tracked][task] = remote
    return remote


_started_here = False  # whether the Ray this process is connected to is one we started


def ensure_ray(address: str | None = None) -> bool:
    """Join ``address``, or start a local Ray; return True if we started one."""
    global _started_here
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    start_local_ray()
    _started_here = True
    return True


def stop_ray() -> None:
    """Shut down the local Ray we started (someone else's, or a cluster we joined, stays)."""
    global _started_here
    if _started_here and ray.is_initialized():
        ray.shutdown()
    _started_here = False


def start_local_ray(**options: Any) -> None:
    """``ray.init`` of a new local Ray (never someone's `ray start`), from a thread that
    lives as long as this process.

    Ray ties the processes it starts to the *thread* that starts them (Linux sends a
    parent-death signal when that thread ends): started from a short-lived thread
    (``exoflow resume`` resumes in one, a notebook runs an event-waiting cell in one) its
    end broke the cluster, and its dashboard and runtime-env agents outlived us.
    """
    if threading.current_thread() is threading.main_thread():
        _start_local_ray(options)
        return
    started: dict[str, BaseException | None] = {}
    ready = threading.Event()

    def keeper() -> None:
        try:
            _start_local_ray(options)
            started["error"] = None
        except BaseException as exc:  # handed to the caller's thread
            started["error"] = exc
        ready.set()
        threading.Event().wait()  # until the process exits

    threading.Thread(target=keeper, name="exoflow-ray", daemon=True).start()
    ready.wait()
    if started["error"] is not None:
        raise started["error"]


def _start_local_ray(options: dict[str, Any]) -> None:
    """Tried again if it times out while starting: Ray 2.60's raylet gives its dashboard
    agent a fixed 15 s and aborts when an overloaded machine makes it miss that."""
    # Give the agents the raylet waits for more time than Ray's default on a busy machine.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    for attempt in range(1, START_TRIES + 1):
        before = _children()
        try:
            ray.init(address="local", include_dashboard=False, log_to_driver=True, **options)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == START_TRIES:
                raise
            ray.shutdown()
            _kill(_children() - before)  # what the failed start left: gcs_server, agents


START_TRIES = 3


def _children() -> set:
    return set(psutil.Process().children(recursive=True))


def _kill(procs: set) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
