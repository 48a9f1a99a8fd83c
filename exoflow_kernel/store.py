"""The DuckDB lineage store: schema, and every query the engine and CLI make.

Layout: ``<store>/lineage.duckdb`` (schema ``exoflow``, plus user tables that
transactional effects write in ``main``) and ``<store>/blobs/``. Task history
is append-only (``task_log``): a grouped commit is a handful of multi-row
INSERTs, which DuckDB does cheaply, and nothing is ever updated in place on the
hot path. The current state of a task is its latest log row.

A process that cannot open the file because a live owner holds it gets a
*remote* store: the same read methods, answered by the owner over its socket.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import duckdb

from . import blobs
from . import owner as own
from .errors import QueryError, StoreError, WorkflowLiveError, WorkflowNotFoundError

READER_GRACE = 10.0  # seconds a writer waits for a short-lived reader (the CLI) to let go

SCHEMA = """
create schema if not exists exoflow;
create table if not exists exoflow.workflows(
    workflow_id varchar, status varchar, root_task varchar, dag blob, error varchar,
    created_at timestamp, updated_at timestamp);
create table if not exists exoflow.tasks(
    workflow_id varchar, task_id varchar, name varchar, checkpoint varchar,
    deterministic boolean, effect varchar, upstream varchar[], parent varchar);
create table if not exists exoflow.task_log(
    workflow_id varchar, task_id varchar, run integer, seq bigint, state varchar,
    location varchar, size bigint, checksum bigint, inline blob, error varchar, started bigint);
create table if not exists exoflow.runs(
    workflow_id varchar, run integer, started_at timestamp, owner varchar, plan json);
create table if not exists exoflow.effects(
    workflow_id varchar, task_id varchar, kind varchar, idempotency_key varchar,
    phase varchar, run integer, recorded_at timestamp, rows_written bigint);
create table if not exists exoflow.events(
    workflow_id varchar, name varchar, payload blob, sent_at timestamp);
create table if not exists exoflow.leases(
    workflow_id varchar, owner varchar, pid integer, host varchar, run integer, acquired_at timestamp);
create table if not exists exoflow.cells(
    workflow_id varchar, task_id varchar, source varchar, source_hash varchar, run integer);
"""

LATEST = """
with latest as (
  select task_id, arg_max(state, seq) as state, arg_max(run, seq) as run,
         count(distinct run) as dispatched,
         least(min(seq) filter (where state = 'running'), max(started)) as started,
         max(seq) filter (where state in ('committed', 'continued', 'done', 'failed')) as ended
  from exoflow.task_log where workflow_id = $wf group by task_id)
"""

# Each task's graph-legend state, from its latest log row, the last run's plan labels
# (recovery.py names them) and, while the workflow runs, the workers' start log.
STATE = """case
  {ended}when $live and coalesce(st.in_last, false)
       and not coalesce(l.run = (select run from last) and l.state <> 'failed', false) then 'running'
  when b.label in ('recovered', 'skipped') then b.label
  when l.state in ('committed', 'continued', 'done') then
    case when l.run = (select run from last) and b.label in ('re-executed', 'ambiguous', 'stale')
         then b.label else 'committed' end
  when l.state = 'failed' then 'failed'
  when b.label in ('ambiguous', 'stale') then b.label
  else 'pending'
end"""
# An untracked task that ended in the run under way and has no row of it yet (end log).
ENDED_STATE = "when $live and en.in_last and not coalesce(l.run = (select run from last), false) then 'committed'\n  "
# What ``lineage`` adds per task to what the state needs (``state_counts`` skips it).
DETAIL = """, count(distinct run) as dispatched,
  least(min(seq) filter (where state = 'running'), max(started)) as started,
  max(seq) filter (where state in ('committed', 'continued', 'done', 'failed')) as ended,
  arg_max(size, seq) filter (where state in ('committed', 'continued')) as size"""
# A start (or end) log, ``task\trun`` lines, as a table; a torn last line is skipped.
STARTED = """select task_id, run from read_csv($started, delim = '\t', header = false, auto_detect = false,
  columns = {'task_id': 'varchar', 'run': 'integer'}, ignore_errors = true) where run is not null"""
NO_STARTED = "select null::varchar as task_id, null::integer as run where false"
# The end log of untracked tasks: ``task\trun\tstarted`` (µs since the epoch).
ENDED = """select task_id, run, started from read_csv($ended, delim = '\t', header = false, auto_detect = false,
  columns = {'task_id': 'varchar', 'run': 'integer', 'started': 'bigint'}, ignore_errors = true)
  where started is not null"""
ENDED_JOINS = """
       left join ended en on en.task_id = t.task_id and en.run = (select run from last)
       left join ended er on er.task_id = t.task_id and er.run = coalesce(l.run, (select run from last))"""


def states_query(started: str, detail: bool, ended: str | None = None) -> str:
    """``with ... states as (pos, task_id, name, checkpoint, effect, state[, detail])``; the
    end log's CTE and joins only when there is one (they cost a 1-task lineage ~4 ms)."""
    start = "coalesce(l.started, er.started)" if ended else "l.started"
    return f"""
with last as (select coalesce(max(run), 0) as run from exoflow.runs where workflow_id = $wf)
, latest as (
  select task_id, arg_max(state, seq) as state, arg_max(run, seq) as run{DETAIL if detail else ""}
  from exoflow.task_log where workflow_id = $wf group by task_id)
, labels as (
  select key as task_id, value ->> '$' as label from json_each(coalesce(
    (select plan from exoflow.runs where workflow_id = $wf order by run desc limit 1), '{{}}')))
, started as (
  select task_id, count(distinct run) as runs, bool_or(run = (select run from last)) as in_last
  from ({started}) group by task_id)
{f", ended as (select task_id, run, max(started) as started, true as in_last from ({ended}) group by all)" if ended else ""}
, states as (
  select t.rowid as pos, t.task_id, t.name, t.checkpoint, t.effect,
         {STATE.format(ended=ENDED_STATE if ended else "")} as state
         {f", greatest(coalesce(st.runs, 0), coalesce(l.dispatched, 0)) as attempts, {start} as started, l.ended, l.size"
          if detail else ""}
  from exoflow.tasks t left join latest l using (task_id) left join labels b using (task_id)
       left join started st using (task_id){ENDED_JOINS if ended else ""}
  where t.workflow_id = $wf)
"""


@dataclass
class Checkpoint:
    """Where a committed output lives: a file, or inline bytes."""

    task_id: str
    run: int
    location: str | None
    size: int
    checksum: int | None
    inline: bytes | None


class Clock:
    """Monotonic microsecond stamps, unique within a process (orders the log)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1000)
            return self._last


class Store:
    """One store directory. ``mode`` is "owner" (we hold DuckDB) or "remote" (another
    process does, and answers our queries over its socket).

    ``role`` "writer" (notebooks, scripts, ``exoflow resume``) owns the store and serves
    others; "reader" (the other CLI commands) holds the file read-only for a moment:
    writers wait for it rather than go remote, other readers share the file with it.
    """

    def __init__(self, root: str | os.PathLike, role: str = "writer") -> None:
        self.role = role
        self.root = Path(root).expanduser().absolute()
        self.blobs = self.root / "blobs"
        self.clock = Clock()
        self.con: duckdb.DuckDBPyConnection | None = None
        self.server: own.OwnerServer | None = None
        self.owner: own.OwnerInfo | None = None
        self._leftovers_at = float("-inf")  # when refresh_leftovers last listed them
        # Set by the layer that runs workflows (ground floor must not import it).
        self.live: Callable[[], list[str]] = list
        self.on_event: Callable[[str], None] = lambda workflow_id: None
        self._prepare_dir()
        self._open()

    # -- opening --------------------------------------------------------------

    def _prepare_dir(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(str(self.root), "it is a file, not a directory, so it is not writable as a store")
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(str(self.root), f"the directory is not writable ({exc.strerror or exc})") from exc

    def _open(self) -> None:
        deadline = time.monotonic() + READER_GRACE
        while (con := self._connect()) is None:
            if self.owner is not None and self.owner.role != "reader" and self.owner.alive():
                self.mode = "remote"  # a writer owns it: ask it over its socket
                return
            if time.monotonic() > deadline:
                self._refuse_locked()
            time.sleep(0.05)  # a CLI reader holds it for a moment, or an owner is opening: wait
        self.con, self.mode = con, "owner"
        if self.role == "reader":
            self._hold_for_reading()
        else:
            self.con.execute(SCHEMA)
            self._take_ownership()
        atexit.register(self._close_at_exit)

    def _refuse_locked(self) -> None:
        who = f"a reader ({self.owner.describe()})" if self.owner and self.owner.alive() else "a process that is not ExoFlow's"
        raise StoreError(str(self.root), f"lineage.duckdb stayed locked by {who} for {READER_GRACE:g} s",
                         "Close whatever holds the file (a DuckDB shell?) and try again.")

    def _connect(self) -> duckdb.DuckDBPyConnection | None:
        """Open the DuckDB file, or return None if it is locked (``self.owner`` then says
        by whom, when an ExoFlow process has written owner.json)."""
        path = self.root / "lineage.duckdb"
        try:
            return duckdb.connect(str(path), read_only=self.role == "reader")
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                if "not a valid duckdb" in str(exc).lower():
                    raise StoreError(str(self.root), f"{path.name} is not a DuckDB file ({exc})",
                                     "Move it away (or restore the store from a backup), or pick another "
                                     "directory with exo.init(store=...).") from exc
                raise StoreError(str(self.root), f"DuckDB cannot open {path.name}: {exc}") from exc
            self.owner = own.read_owner(self.root)
            return None
        except duckdb.Error as exc:
            raise StoreError(str(self.root), f"{path.name} is not a readable DuckDB file ({exc})") from exc

    def _bury_dead_owner(self) -> own.OwnerInfo | None:
        """A dead owner's Ray leftovers and socket go before we write our owner.json over
        its; return the recorded owner if it is another live process (a reader sharing the file)."""
        previous = own.read_owner(self.root)
        if previous is None or previous.pid == os.getpid():
            return None
        if previous.alive():
            return previous
        own.kill_leftovers(previous)
        if previous.socket:
            Path(previous.socket).unlink(missing_ok=True)
        return None

    def _take_ownership(self) -> None:
        self._bury_dead_owner()
        own.sweep_sockets()
        path = own.socket_path(self.root)
        self.server = own.OwnerServer(path, self._serve)
        self.owner = own.me(path, self.role)
        self.refresh_leftovers()

    def _hold_for_reading(self) -> None:
        """A reader holds the file read-only for a moment and serves nobody: its
        owner.json (no socket) tells a writer to wait its turn. Readers share the file
        (DuckDB allows many read-only opens), so a second one leaves the first's record."""
        self.owner = own.me("", self.role)
        if self._bury_dead_owner() is None:
            own.write_owner(self.root, self.owner)

    def refresh_leftovers(self, at_most_every: float = 0.0) -> None:
        """Record our Ray child processes, so a successor can clean them up (listing
        them costs ~3 ms: a caller that asks on every run asks for ``at_most_every``)."""
        if self.mode == "owner" and self.owner is not None:
            if time.monotonic() - self._leftovers_at < at_most_every:
                return
            self._leftovers_at = time.monotonic()
            self.owner.leftovers = own.ray_descendants()
            own.write_owner(self.root, self.owner)

    def _close_at_exit(self) -> None:
        """Leave no socket or owner.json behind on a normal exit; but a workflow still
        running in a daemon thread is left as a crash would leave it (resumable)."""
        if not self.live():
            self.close()

    def close(self) -> None:
        atexit.unregister(self._close_at_exit)
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.con is not None:
            self.con.close()
            self.con = None
            own.remove_owner(self.root, os.getpid())

    def query_live(self) -> list[str]:
        """Workflows the owner process is running right now."""
        if self.mode == "remote":
            return self._call("live")
        return self.live()

    def require_owner(self, workflow_id: str | None = None) -> None:
        if self.mode != "owner":
            raise WorkflowLiveError(workflow_id, self.owner.describe() if self.owner else "?", str(self.root))

    # -- queries ----------------------------------------------------------------

    def _call(self, op: str, *args: Any) -> Any:
        """``op`` at the owner; if the owner goes away meanwhile (a notebook that exits
        while the CLI asks), open the store again and answer here, or ask its successor."""
        deadline = time.monotonic() + READER_GRACE
        while True:
            try:
                return own.call(self.owner.socket, op, *args)
            except own.OwnerUnreachable as exc:
                if exc.timed_out or time.monotonic() > deadline:
                    raise StoreError(str(self.root), f"its owner ({self.owner.describe()}) did not answer ({exc})",
                                     "If that process is stuck, stop it and try again.") from None
            time.sleep(0.05)
            self._open()
            if self.mode == "owner":
                return self._serve(op, *args)

    def query(self, sql: str, params: Sequence | dict | None = None) -> list[tuple]:
        """A read query, here or at the owner."""
        if self.mode == "remote":
            return self._call("query", sql, params)
        cur = self.con.cursor()
        try:
            return cur.execute(sql, params).fetchall()
        finally:
            cur.close()

    def user_sql(self, sql: str) -> list[tuple]:
        """``exo.sql``: read-only statements on the store, for users."""
        _check_read_only(sql)
        return self.query(sql)

    def _serve(self, op: str, *args: Any) -> Any:
        if op == "query":
            _check_read_only(args[0])
            return self.query(*args)
        if op == "send_event":
            return self.send_event(*args)
        if op == "live":
            return self.live()
        raise ValueError(f"unknown owner operation {op!r}")

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One DuckDB transaction on its own cursor: committed, or rolled back on error."""
        cur = self.con.cursor()
        try:
            cur.execute("begin transaction")
            try:
                yield cur
            except BaseException:
                cur.execute("rollback")
                raise
            cur.execute("commit")
        finally:
            cur.close()

    # -- workflows ------------------------------------------------------------------

    def workflow(self, workflow_id: str) -> tuple[str, str, bytes, str | None]:
        """(status, root_task, dag, error) or WorkflowNotFoundError."""
        rows = self.query(
            "select status, root_task, dag, error from exoflow.workflows where workflow_id = ?", [workflow_id]
        )
        if not rows:
            raise WorkflowNotFoundError(workflow_id, str(self.root))
        return rows[0]

    def exists(self, workflow_id: str) -> bool:
        return bool(self.query("select 1 from exoflow.workflows where workflow_id = ?", [workflow_id]))

    def list_workflows(self) -> list[tuple[str, str]]:
        return self.query("select workflow_id, status from exoflow.workflows order by created_at, workflow_id")

    def set_status(self, workflow_id: str, status: str, error: str | None = None) -> None:
        with self.transaction() as cur:
            cur.execute(
                "update exoflow.workflows set status = ?, error = ?, updated_at = now() where workflow_id = ?",
                [status, error, workflow_id],
            )

    def delete(self, workflow_id: str) -> None:
        with self.transaction() as cur:
            for table in ("workflows", "tasks", "task_log", "runs", "effects", "events", "leases", "cells"):
                cur.execute(f"delete from exoflow.{table} where workflow_id = ?", [workflow_id])

    def task_rows(self, workflow_id: str) -> list[tuple]:
        """Static task info: (task_id, name, checkpoint, deterministic, effect, upstream, parent)."""
        return self.query(
            "select task_id, name, checkpoint, deterministic, effect, upstream, parent "
            "from exoflow.tasks where workflow_id = ? order by rowid",
            [workflow_id],
        )

    def latest_states(self, workflow_id: str) -> dict[str, tuple[str, int, int]]:
        """task_id -> (latest state, run of that state, times dispatched)."""
        rows = self.query(LATEST + "select task_id, state, run, dispatched from latest", {"wf": workflow_id})
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def checkpoints(self, workflow_id: str) -> dict[str, Checkpoint]:
        """The newest committed checkpoint of every task that has one."""
        rows = self.query(
            "select task_id, arg_max(run, seq), arg_max(location, seq), arg_max(size, seq), "
            "arg_max(checksum, seq), arg_max(inline, seq) from exoflow.task_log "
            "where workflow_id = ? and state in ('committed', 'continued') group by task_id",
            [workflow_id],
        )
        return {r[0]: Checkpoint(*r) for r in rows}

    def pending_intents(self, workflow_id: str) -> set[str]:
        """Idempotent tasks with an intent row and no commit: ambiguous after a crash."""
        rows = self.query(
            "select task_id from exoflow.effects where workflow_id = ? and kind = 'idempotent' "
            "group by task_id having count(*) filter (where phase = 'commit') = 0",
            [workflow_id],
        )
        return {r[0] for r in rows}

    def next_run(self, workflow_id: str) -> int:
        rows = self.query("select coalesce(max(run), 0) from exoflow.runs where workflow_id = ?", [workflow_id])
        return rows[0][0] + 1

    def lineage(self, workflow_id: str, live: bool) -> list[tuple]:
        """One row per task, in definition order: the fields of ``api.TaskRecord``.

        ``live``: the workflow runs now, so a task started in this run and not yet
        logged in it shows as ``running``. The caller knows the workflow exists (it
        read its status): no rows are not an error here, and a live CLI saves a call."""
        return self._states(workflow_id, live, True, """
            select task_id, name, state, attempts, checkpoint, effect,
                   make_timestamp(started), make_timestamp(ended), size
            from states order by pos""")

    def state_counts(self, workflow_id: str, live: bool) -> dict[str, int]:
        """Graph-legend state -> number of tasks: ``lineage`` counted in the query (and
        nothing else worked out), so ``exoflow status`` stays fast at 100k tasks."""
        return dict(self._states(workflow_id, live, False, "select state, count(*) from states group by state"))

    def _states(self, workflow_id: str, live: bool, detail: bool, select: str) -> list[tuple]:
        params: dict[str, Any] = {"wf": workflow_id, "live": live}
        logs = {}
        # Attempts and "running" need the start log; untracked tasks' states and start times,
        # the end log; counts of a stopped run need neither.
        for kind, query, none in (("started", STARTED, NO_STARTED), ("ended", ENDED, None)):
            log = blobs.worker_log(self.blobs, workflow_id, kind)
            logs[kind] = none
            if (live or detail) and log.exists():
                logs[kind], params[kind] = query, str(log)
        return self.query(states_query(logs["started"], detail, logs["ended"]) + select, params)

    # -- events ------------------------------------------------------------------------

    def send_event(self, workflow_id: str, name: str, payload: bytes) -> bool:
        """Record an event durably; False if it was already there (first one wins)."""
        if self.mode == "remote":
            return self._call("send_event", workflow_id, name, payload)
        if not self.exists(workflow_id):
            raise WorkflowNotFoundError(workflow_id, str(self.root))
        with self.transaction() as cur:
            seen = cur.execute(
                "select 1 from exoflow.events where workflow_id = ? and name = ?", [workflow_id, name]
            ).fetchall()
            if seen:
                return False
            cur.execute("insert into exoflow.events values (?, ?, ?, now())", [workflow_id, name, payload])
        self.on_event(workflow_id)
        return True

    def events(self, workflow_id: str, names: Sequence[str]) -> dict[str, bytes]:
        if not names:
            return {}
        rows = self.query(
            "select name, payload from exoflow.events where workflow_id = ? and list_contains(?, name)",
            [workflow_id, list(names)],
        )
        return dict(rows)


def _check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(sql, f"it does not parse ({exc})") from exc
    for st in statements:
        if st.type.name not in ("SELECT", "EXPLAIN", "PRAGMA"):
            raise QueryError(
                sql, f"it is a {st.type.name} statement and exo.sql runs read queries only; "
                "write rows from a task with effect='transactional' and ctx.write(...)"
            )
