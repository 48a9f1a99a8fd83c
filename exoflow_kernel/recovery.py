"""The recovery planner: what to reuse, re-run, skip, or report as ambiguous.

Given a graph and what the store says happened before, decide each task's
fate for this run, walking from the outputs backwards so that only values a
not-yet-committed task needs are loaded or recomputed:

* committed with a usable checkpoint: ``recovered`` if needed, else ``skipped``;
* ``checkpoint=False`` and done: ``skipped``, or ``re-executed`` when needed;
* committed, checkpoint damaged: deterministic tasks are ``re-executed``
  (a *replay*: their effects are not applied again); nondeterministic ones
  cannot be, and the plan fails with :class:`CheckpointCorruptedError`;
* an idempotent task with an intent and no commit: ``ambiguous`` (it re-runs
  with the same idempotency key, and the report says so);
* anything else that started before: ``re-executed``; never started: ``pending``;
* a task whose code changed (notebooks) and everything after it: ``stale``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import blobs
from .dag import Graph
from .errors import CheckpointCorruptedError
from .store import Checkpoint, Store

RECOVERED, SKIPPED, REEXECUTED, AMBIGUOUS, PENDING, STALE = (
    "recovered", "skipped", "re-executed", "ambiguous", "pending", "stale",
)
COMMITTED_STATES = ("committed", "continued")


@dataclass
class Snapshot:
    """What the store knows about one workflow's tasks."""

    states: dict[str, tuple[str, int, int]]
    checkpoints: dict[str, Checkpoint]
    intents: set[str]
    started: dict[str, set[int]]
    defined: set[str]  # task ids already in exoflow.tasks (continuations add theirs)

    @classmethod
    def read(cls, store: Store, workflow_id: str) -> "Snapshot":
        return cls(store.latest_states(workflow_id), store.checkpoints(workflow_id),
                   store.pending_intents(workflow_id), blobs.read_started(store.blobs, workflow_id),
                   {row[0] for row in store.task_rows(workflow_id)})

    @classmethod
    def empty(cls) -> "Snapshot":
        """A workflow that never ran: nothing to read."""
        return cls({}, {}, set(), {}, set())

    def state(self, task_id: str) -> str | None:
        entry = self.states.get(task_id)
        return entry[0] if entry else None


@dataclass
class Plan:
    labels: dict[str, str] = field(default_factory=dict)
    replay: set[str] = field(default_factory=set)  # committed before: do not apply effects again
    warnings: list[str] = field(default_factory=list)

    def reuses(self, task_id: str) -> bool:
        return self.labels.get(task_id) in (RECOVERED, SKIPPED)


def usable(ckpt: Checkpoint | None, blob_root: Path) -> str | None:
    """None if the checkpoint looks usable, else why not (cheap: no full read)."""
    if ckpt is None:
        return "no checkpoint was recorded"
    if ckpt.inline is not None:
        return None
    path = blob_root / ckpt.location
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"the file {path} is missing"
    if size != ckpt.size:
        return f"the file {path} has {size} bytes, {ckpt.size} were committed"
    return None


def plan(workflow_id: str, graph: Graph, snap: Snapshot, blob_root: Path,
         needed: set[str], stale: set[str] = frozenset()) -> Plan:
    """Label every task of ``graph``; ``needed`` holds tasks whose value is wanted."""
    out = Plan()
    must_run: set[str] = set()
    needed = set(needed)
    stale_all = _with_downstream(graph, stale)
    for task_id in reversed(graph.order()):
        if any(d in must_run for d in graph.downstream(task_id)):
            needed.add(task_id)
        label = _label(workflow_id, task_id, graph, snap, blob_root, task_id in needed, stale_all, out)
        out.labels[task_id] = label
        if label not in (RECOVERED, SKIPPED):
            must_run.add(task_id)
    return out


def _label(workflow_id: str, task_id: str, graph: Graph, snap: Snapshot, blob_root: Path,
           needed: bool, stale: set[str], out: Plan) -> str:
    if task_id in stale:
        return STALE
    state = snap.state(task_id)
    opts = graph.nodes[task_id].options
    if state == "done":
        return REEXECUTED if needed else SKIPPED
    if state in COMMITTED_STATES:
        if not needed:
            return SKIPPED
        problem = usable(snap.checkpoints.get(task_id), blob_root)
        if problem is None:
            return RECOVERED
        if not opts.deterministic:
            raise CheckpointCorruptedError(workflow_id, task_id, str(blob_root), problem)
        out.replay.add(task_id)
        out.warnings.append(f"task {task_id!r}: checkpoint unusable ({problem}); re-executing it")
        return REEXECUTED
    if task_id in snap.intents:
        return AMBIGUOUS
    return REEXECUTED if state is not None or task_id in snap.started else PENDING


def _with_downstream(graph: Graph, tasks: set[str]) -> set[str]:
    import networkx as nx  # on first use, as in dag.Graph.digraph

    out = set()
    for t in tasks:
        if t in graph.nodes:
            out |= {t} | nx.descendants(graph.digraph, t)
    return out
