"""The commit protocol: grouped DuckDB transactions.

One transaction carries, for many tasks at once: their log rows (committed
with checkpoint metadata or inline bytes, or failed), the rows their
transactional effects write into user tables, effect intents and commits, and
new task definitions (continuations). A task's checkpoint and its effect are
therefore durable together or not at all. If a batch fails (say a task's rows
do not fit its table), it is retried one task at a time so that only the
guilty task fails.
"""

from __future__ import annotations

import json
from datetime import datetime
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import duckdb

from . import faults
from .errors import StoreError
from .recovery import PENDING
from .store import Store

if TYPE_CHECKING:
    import pyarrow

_FEW = 4  # up to this many rows, a VALUES list beats registering columns


@dataclass
class Commit:
    """A finished task, ready to become durable."""

    task_id: str
    state: str  # "committed" (has a checkpoint) or "done" (checkpoint=False)
    meta: dict
    effect: str | None
    key: str | None
    apply_writes: bool = True


@dataclass
class Batch:
    """Everything the next transaction will write."""

    intents: list[tuple[str, str]] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    new_tasks: list[tuple] = field(default_factory=list)
    plan: dict[str, str] | None = None  # the run's recovery plan, when it changed

    def __bool__(self) -> bool:
        return bool(self.intents or self.commits or self.failures or self.new_tasks or self.plan)


def apply(store: Store, workflow_id: str, run: int, batch: Batch) -> list[tuple[str, str]]:
    """Write ``batch`` in one transaction; return tasks whose commit was refused."""
    ids = [c.task_id for c in batch.commits]
    try:
        with store.transaction() as cur:
            _write(cur, store, workflow_id, run, batch)
            faults.point("in-commit", ids)
        faults.point("committed", ids)
        return []
    except (duckdb.IOException, duckdb.TransactionException, duckdb.FatalException) as exc:
        raise StoreError(str(store.root), f"DuckDB could not commit ({exc})",
                         f"Nothing of that commit was kept. Fix the cause (disk space?), then "
                         f"exo.resume({workflow_id!r}).") from None
    except duckdb.Error:
        if not any(c.meta.get("writes") for c in batch.commits):
            raise
    return _apply_one_by_one(store, workflow_id, run, batch)


def _apply_one_by_one(store: Store, workflow_id: str, run: int, batch: Batch) -> list[tuple[str, str]]:
    rest = Batch(batch.intents, [], batch.failures, batch.new_tasks, batch.plan)
    with store.transaction() as cur:
        _write(cur, store, workflow_id, run, rest)
    refused = []
    for commit in batch.commits:
        try:
            with store.transaction() as cur:
                _write(cur, store, workflow_id, run, Batch(commits=[commit]))
        except (duckdb.IOException, duckdb.TransactionException, duckdb.FatalException):
            raise
        except duckdb.Error as exc:
            refused.append((commit.task_id, f"its rows could not be written: {exc}"))
    return refused


def _write(cur: duckdb.DuckDBPyConnection, store: Store, wf: str, run: int, batch: Batch) -> None:
    if batch.new_tasks:
        _insert(cur, "exoflow.tasks", [(wf, *row) for row in batch.new_tasks])
    if batch.plan is not None:
        cur.execute("update exoflow.runs set plan = ? where workflow_id = ? and run = ?",
                    [plan_json(batch.plan), wf, run])
    log = []
    for commit in batch.commits:
        m = commit.meta
        log.append((wf, commit.task_id, run, store.clock(), commit.state, m.get("location"),
                    m.get("size"), m.get("checksum"), m.get("inline"), None, m.get("started")))
    log += [(wf, t, run, store.clock(), "failed", None, None, None, None, err, None) for t, err in batch.failures]
    _insert(cur, "exoflow.task_log", log)
    now = datetime.now()
    effects = [(wf, t, "idempotent", key, "intent", run, now, None) for t, key in batch.intents]
    for commit in batch.commits:
        if commit.effect is None or not commit.apply_writes:
            continue
        written = sum(_write_rows(cur, table, rows) for table, rows in commit.meta.get("writes", ()))
        effects.append((wf, commit.task_id, commit.effect, commit.key, "commit", run, now, written))
    _insert(cur, "exoflow.effects", effects)


def _insert(cur: duckdb.DuckDBPyConnection, table: str, rows: list[tuple]) -> None:
    """Append rows: a VALUES list when few, else NumPy object columns DuckDB scans in one go.

    Not an Arrow table: ``pa.array`` imports pandas the first time (0.3-2 s, paid by
    the first commit of every process, a resume's included)."""
    if not rows:
        return
    if len(rows) <= _FEW:
        marks = "(" + ", ".join("?" * len(rows[0])) + ")"
        cur.execute(f"insert into {table} values " + ", ".join([marks] * len(rows)), [v for r in rows for v in r])
        return
    import numpy as np  # here: looking at a store (the CLI) never commits

    # fromiter, not np.array: a column of equal-length lists must stay one-dimensional
    batch = {f"c{i}": np.fromiter(col, dtype=object, count=len(rows)) for i, col in enumerate(zip(*rows))}
    # No try/finally: in an aborted transaction unregister would fail and hide the
    # real error; the cursor (and its registrations) is dropped with the rollback.
    cur.register("_exoflow_batch", batch)
    cur.execute(f"insert into {table} select * from _exoflow_batch")
    cur.unregister("_exoflow_batch")


def _write_rows(cur: duckdb.DuckDBPyConnection, table: str, rows: "pyarrow.Table") -> int:
    """Append rows to main.<table>, creating it from the rows' schema the first time."""
    cur.register("_exoflow_rows", rows)  # dropped with the cursor if this fails (see _insert)
    cur.execute(f'create table if not exists main."{table}" as select * from _exoflow_rows limit 0')
    cur.execute(f'insert into main."{table}" by name select * from _exoflow_rows')
    cur.unregister("_exoflow_rows")
    return rows.num_rows


def plan_json(labels: dict[str, str]) -> str:
    """A run's plan as stored: tasks it does not name are pending. A fresh run of 100k
    tasks stores ``{}``, not 2.5 MB that every ``exoflow status`` would have to parse."""
    return json.dumps({task: label for task, label in labels.items() if label != PENDING})


def start_run(store: Store, workflow_id: str, run: int, plan: dict[str, str],
              new: tuple[str, bytes, list[tuple]] | None = None) -> None:
    """Record a run, its recovery plan and our lease (and, for ``new=(root, dag, tasks)``,
    the workflow itself) in one transaction."""
    owner = store.owner
    with store.transaction() as cur:
        if new is not None:
            root, dag, tasks = new
            cur.execute("insert into exoflow.workflows values (?, 'RUNNING', ?, ?, null, now(), now())",
                        [workflow_id, root, dag])
            _insert(cur, "exoflow.tasks", [(workflow_id, *row) for row in tasks])
        cur.execute("insert into exoflow.runs values (?, ?, now(), ?, ?)",
                    [workflow_id, run, owner.describe(), plan_json(plan)])
        cur.execute("delete from exoflow.leases where workflow_id = ?", [workflow_id])
        cur.execute("insert into exoflow.leases values (?, ?, ?, ?, ?, now())",
                    [workflow_id, owner.describe(), owner.pid, owner.host, run])
        cur.execute("update exoflow.workflows set status = 'RUNNING', error = null, updated_at = now() "
                    "where workflow_id = ?", [workflow_id])


def finish_run(store: Store, workflow_id: str, status: str, error: str | None) -> None:
    """Release the lease and set the final status together."""
    with store.transaction() as cur:
        cur.execute("delete from exoflow.leases where workflow_id = ?", [workflow_id])
        cur.execute("update exoflow.workflows set status = ?, error = ?, updated_at = now() "
                    "where workflow_id = ?", [status, error, workflow_id])


def replace_graph(store: Store, workflow_id: str, root: str, dag: bytes, tasks: list[tuple]) -> None:
    """A workflow that changed (notebooks): store its new graph, and the current options
    of its tasks (tasks it no longer has keep their rows and history)."""
    with store.transaction() as cur:
        cur.execute("update exoflow.workflows set root_task = ?, dag = ?, updated_at = now() where workflow_id = ?",
                    [root, dag, workflow_id])
        cur.execute("delete from exoflow.tasks where workflow_id = ? and list_contains(?, task_id)",
                    [workflow_id, [row[0] for row in tasks]])
        _insert(cur, "exoflow.tasks", [(workflow_id, *row) for row in tasks])
