"""Bad input, as one table: each malformed input, the error it must raise, and a message
that says what happened *and* what to do next. After every case the store must be
exactly as it was: the reference workflow still SUCCESSFUL with the same output and
lineage, the DuckDB file opens on its own, and no row of any earlier workflow (or of
any user table) lost or changed.

Everything shares one store, one reference workflow and one in-process IPython shell
(module-scoped), and the session's Ray from conftest: the file stays fast.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import duckdb
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import exoflow_kernel as exo


# -- tasks (module level, so Ray workers can import them) ------------------------------


@exo.task
def make_rows(n):
    return [{"id": i, "amount": 10 * i} for i in range(n)]


@exo.task(effect="transactional")
def save(rows):
    exo.context().write("sales", rows)
    return len(rows)


@exo.task
def add(a, b):
    return a + b


@exo.task(max_retries=0)
def leaky():
    return threading.Lock()


@exo.task(effect="transactional", max_retries=0)
def write_to(table, rows):
    exo.context().write(table, rows)
    return 0


@exo.task(max_retries=0)
def write_without_effect():
    exo.context().write("sales", [{"id": 99, "amount": 0}])
    return 0


# -- the shared store, and what "intact" means -----------------------------------------


@dataclass
class Env:
    root: Path
    store: Path
    shell: InteractiveShell
    last: tuple | None = None  # the store's state after the last case that passed


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    store = root / "store"
    exo.init(store)
    assert exo.run(save.bind(make_rows.bind(3)), workflow_id="ref") == 3
    shell = InteractiveShell.instance()
    old = os.environ.get("EXOFLOW_STORE")
    os.environ["EXOFLOW_STORE"] = str(store)  # the extension's start-up banner looks there
    try:
        shell.run_line_magic("load_ext", "jupyter_ext")
    finally:
        if old is None:
            del os.environ["EXOFLOW_STORE"]
        else:
            os.environ["EXOFLOW_STORE"] = old
    magic(Env(root, store, shell), f"%exoflow init --store {store} --workflow nbw")
    yield Env(root, store, shell)
    InteractiveShell.clear_instance()


def magic(env: Env, text: str, cell_id: str | None = None) -> None:
    """Run a cell in the real shell, as a notebook would; re-raise what it raised."""
    result = env.shell.run_cell(text, store_history=False, cell_id=cell_id)
    if result.error_before_exec is not None:
        raise result.error_before_exec
    if result.error_in_exec is not None:
        raise result.error_in_exec


def snapshot(env: Env) -> tuple:
    """The store's observable state: through the API, then by opening the DuckDB file
    itself (the store is let go first) and reading every table: (statuses, api, tables)."""
    listed = dict(exo.list_workflows())
    api = (exo.status("ref"), exo.output("ref"), exo.output("ref", task="make_rows"),
           [tuple(r) for r in exo.lineage("ref")])
    exo.close()
    tables: dict[str, tuple[int | None, list]] = {}
    con = duckdb.connect(str(env.store / "lineage.duckdb"), read_only=True)
    try:
        for schema, table in con.execute(
                "select schema_name, table_name from duckdb_tables() order by all").fetchall():
            cursor = con.execute(f'select * from "{schema}"."{table}" order by all')
            names = [d[0] for d in cursor.description]
            tables[f"{schema}.{table}"] = (names.index("workflow_id") if "workflow_id" in names else None,
                                           cursor.fetchall())
    finally:
        con.close()
    exo.init(env.store)
    return listed, api, tables


def assert_intact(before: tuple, after: tuple) -> None:
    """Nothing that existed before is lost or changed: each earlier workflow has its status,
    the reference workflow its output and lineage, and every row of an earlier workflow
    (and of every user table) is still there, unchanged. New workflows may have appeared
    (a bad value that fails a task leaves a FAILED workflow)."""
    (listed, api, tables), (listed2, api2, tables2) = before, after
    assert {wf: listed2.get(wf) for wf in listed} == listed
    assert api2 == api and api[0] == "SUCCESSFUL" and api[1] == 3
    assert tables2.keys() >= tables.keys()
    for name, (wf_col, rows) in tables.items():
        rows2 = tables2[name][1]
        if wf_col is not None:
            rows2 = [r for r in rows2 if r[wf_col] in listed]
        assert rows2 == rows, f"rows of {name} changed"
    assert len(tables["main.sales"][1]) == 3


# -- the cases -------------------------------------------------------------------------


def _cycle(env: Env) -> None:
    a = add.bind(1, 2)
    b = add.bind(a, 3)
    a.args = (b, 1)  # only reachable by editing a node by hand, as a buggy builder might
    exo.run(b, workflow_id="cycle")


def _a_file(env: Env) -> Path:
    path = env.root / "a-file"
    path.write_text("not a directory")
    return path


def _not_duckdb(env: Env) -> Path:
    path = env.root / "not-a-store"
    path.mkdir(exist_ok=True)
    (path / "lineage.duckdb").write_text("this is not a DuckDB database\n" * 100)
    return path


def _twice(env: Env) -> None:
    magic(env, "%%exoflow task dup --defer\ndup_first = 1", cell_id="dup-a")
    magic(env, "%%exoflow task dup --defer\ndup_second = 2", cell_id="dup-b")


def _same_output(env: Env) -> None:
    magic(env, "%%exoflow task --defer\nshared_out = 1", cell_id="out-a")
    magic(env, "%%exoflow task other_cell --defer\nshared_out = 2", cell_id="out-b")


Case = Callable[[Env], Any]
BAD = "Invalid value"
LIST = r"No workflow 'nope' in the store at .*Check the id with exo.list_workflows\(\)"

CASES = [
    # -- task options: refused when the task is declared, before anything runs
    pytest.param(lambda e: exo.task(checkpoint="maybe")(lambda: 1), exo.InvalidOptionError,
                 r"Invalid value 'maybe' for checkpoint: expected \"sync\", \"async\" or False", id="checkpoint-maybe"),
    pytest.param(lambda e: exo.task(max_retries=-1)(lambda: 1), exo.InvalidOptionError,
                 r"Invalid value -1 for max_retries: expected an integer >= 0", id="max-retries-negative"),
    pytest.param(lambda e: exo.task(max_retries=1.5)(lambda: 1), exo.InvalidOptionError,
                 r"Invalid value 1.5 for max_retries: expected an integer >= 0", id="max-retries-float"),
    pytest.param(lambda e: exo.task(effect="sometimes")(lambda: 1), exo.InvalidOptionError,
                 r"Invalid value 'sometimes' for effect: expected None, \"transactional\" or \"idempotent\"",
                 id="effect-sometimes"),
    pytest.param(lambda e: exo.task(num_cpu=1)(lambda: 1), exo.InvalidOptionError,
                 r"Invalid value 1 for num_cpu: expected a Ray task option .*num_cpus.*check the spelling",
                 id="unknown-ray-option"),
    pytest.param(lambda e: exo.task(num_cpus="two")(lambda: 1), exo.InvalidOptionError,
                 r"Invalid value 'two' for num_cpus: expected .*must be", id="ray-option-wrong-type"),
    pytest.param(lambda e: exo.task(num_returns=3)(lambda: 1), exo.InvalidOptionError,
                 r"Invalid value 3 for num_returns: .*a task returns one value \(return a tuple for several\)", id="ray-num-returns"),
    pytest.param(lambda e: exo.task(retry_exceptions="yes")(lambda: 1), exo.InvalidOptionError,
                 r"Invalid value 'yes' for retry_exceptions: expected True, False or a list of exception classes",
                 id="retry-exceptions-string"),
    pytest.param(lambda e: exo.task(retry_exceptions=["ValueError"])(lambda: 1), exo.InvalidOptionError,
                 r"for retry_exceptions: expected True, False or a list of exception classes", id="retry-exceptions-names"),
    pytest.param(lambda e: exo.task(wait_until_committed=5)(lambda: 1), exo.InvalidOptionError,
                 r"Invalid value 5 for wait_until_committed: expected a task name or a list of task names",
                 id="wait-until-committed-int"),
    pytest.param(lambda e: exo.task(name="load eu/x")(lambda: 1), exo.InvalidOptionError,
                 r"Invalid value 'load eu/x' for name: expected a non-empty string without '/' or whitespace",
                 id="name-bad-characters"),
    pytest.param(lambda e: add.options(checkpoint="maybe"), exo.InvalidOptionError,
                 r"Invalid value 'maybe' for checkpoint: expected", id="options-copy-checkpoint"),
    pytest.param(lambda e: exo.task(checkpoint=False, effect="transactional")(lambda: 1), exo.InvalidOptionError,
                 r"Invalid value False for checkpoint: expected \"sync\" or \"async\" for a task with effect",
                 id="effect-without-checkpoint"),
    # -- ids
    pytest.param(lambda e: exo.status("nope"), exo.WorkflowNotFoundError, LIST, id="status-unknown"),
    pytest.param(lambda e: exo.output("nope"), exo.WorkflowNotFoundError, LIST, id="output-unknown"),
    pytest.param(lambda e: exo.resume("nope"), exo.WorkflowNotFoundError, LIST, id="resume-unknown"),
    pytest.param(lambda e: exo.lineage("nope"), exo.WorkflowNotFoundError, LIST, id="lineage-unknown"),
    pytest.param(lambda e: exo.graph("nope"), exo.WorkflowNotFoundError, LIST, id="graph-unknown"),
    pytest.param(lambda e: exo.cancel("nope"), exo.WorkflowNotFoundError, LIST, id="cancel-unknown"),
    pytest.param(lambda e: exo.delete("nope"), exo.WorkflowNotFoundError, LIST, id="delete-unknown"),
    pytest.param(lambda e: exo.status(""), exo.InvalidOptionError,
                 r"Invalid value '' for workflow_id: expected 1-200 letters", id="status-empty-id"),
    pytest.param(lambda e: exo.output(42), exo.InvalidOptionError,
                 r"Invalid value 42 for workflow_id: expected 1-200 letters", id="output-int-id"),
    pytest.param(lambda e: exo.delete(None), exo.InvalidOptionError,
                 r"Invalid value None for workflow_id: expected 1-200 letters", id="delete-none-id"),
    pytest.param(lambda e: exo.run(add.bind(1, 2), workflow_id="has space"), exo.InvalidOptionError,
                 r"Invalid value 'has space' for workflow_id: expected .*no spaces", id="run-id-with-space"),
    pytest.param(lambda e: exo.output("ref", task="nope"), exo.TaskNotFoundError,
                 r"Workflow 'ref' has no task 'nope'. Its tasks are: make_rows, save.*task=", id="output-unknown-task"),
    pytest.param(lambda e: exo.output("ref", task=""), exo.TaskNotFoundError,
                 r"Workflow 'ref' has no task ''. Its tasks are: make_rows, save", id="output-empty-task"),
    pytest.param(lambda e: exo.run(add.bind(1, 2), workflow_id="ref"), exo.WorkflowExistsError,
                 r"'ref' already exists with a different graph .*Use a new workflow_id", id="run-id-reused"),
    # -- arguments
    pytest.param(lambda e: exo.run(add.bind(threading.Lock(), 1), workflow_id="lock-arg"),
                 exo.UnpicklableWorkflowError, r"cannot be stored for resume.*Pass plain data", id="bind-unpicklable"),
    pytest.param(_cycle, exo.CycleError, r"cycle: add.* -> .*Remove one of these dependencies", id="cycle"),
    pytest.param(lambda e: add.bind(1), exo.TaskArgumentsError,
                 r"add\(\) cannot take these arguments \(missing a required argument: 'b'\).*add.bind", id="bind-too-few"),
    pytest.param(lambda e: add.bind(1, 2, 3), exo.TaskArgumentsError,
                 r"add\(\) cannot take these arguments \(too many positional arguments\)", id="bind-too-many"),
    pytest.param(lambda e: add.bind(1, 2, c=3), exo.TaskArgumentsError,
                 r"cannot take these arguments \(got an unexpected keyword argument 'c'\)", id="bind-unknown-keyword"),
    pytest.param(lambda e: exo.run(lambda: 1, workflow_id="not-a-node"), exo.InvalidOptionError,
                 r"for node: expected a node made with task.bind", id="run-not-a-node"),
    # -- outputs
    pytest.param(lambda e: exo.run(leaky.bind(), workflow_id="leaky"), exo.UnpicklableOutputError,
                 r"'leaky' .*cannot be pickled .*Return plain data", id="unpicklable-output"),
    # -- store paths (a failed init keeps the store already open)
    pytest.param(lambda e: exo.init(_a_file(e)), exo.StoreError,
                 r"a-file: it is a file, not a directory, so it is not writable as a store. Pick a writable directory", id="store-is-a-file"),
    pytest.param(lambda e: exo.init(_a_file(e) / "store"), exo.StoreError,
                 r"not writable \(Not a directory\). Pick a writable directory", id="store-under-a-file"),
    pytest.param(lambda e: exo.init("/proc/exoflow-store"), exo.StoreError,
                 r"/proc/exoflow-store: the directory is not writable .*Pick a writable directory", id="store-unwritable"),
    pytest.param(lambda e: exo.init(_not_duckdb(e)), exo.StoreError,
                 r"lineage.duckdb is not a DuckDB file.*Move it away", id="store-not-duckdb"),
    # -- events
    pytest.param(lambda e: exo.wait_for_event(""), exo.InvalidOptionError,
                 r"Invalid value '' for event name: expected a non-empty string", id="event-empty"),
    pytest.param(lambda e: exo.wait_for_event(7), exo.InvalidOptionError,
                 r"Invalid value 7 for event name: expected a non-empty string", id="event-not-a-string"),
    pytest.param(lambda e: exo.send_event("ref", "two words", 1), exo.InvalidOptionError,
                 r"Invalid value 'two words' for event name: expected", id="send-event-bad-name"),
    pytest.param(lambda e: exo.send_event("nope", "go", 1), exo.WorkflowNotFoundError, LIST,
                 id="send-event-unknown-workflow"),
    pytest.param(lambda e: exo.send_event("ref", "go", threading.Lock()), exo.EventError,
                 r"Cannot send event 'go' to workflow 'ref': the payload does not pickle .*Send plain data",
                 id="send-event-unpicklable"),
    # -- writes
    pytest.param(lambda e: exo.run(write_to.bind("bad name", [{"id": 1}]), workflow_id="w-space"),
                 exo.InvalidOptionError, r"'bad name' for table: expected a plain SQL identifier", id="write-table-space"),
    pytest.param(lambda e: exo.run(write_to.bind("exoflow.tasks", [{"id": 1}]), workflow_id="w-schema"),
                 exo.InvalidOptionError, r"'exoflow.tasks' for table: expected a plain SQL identifier",
                 id="write-engine-table"),
    pytest.param(lambda e: exo.run(write_to.bind("sales", 42), workflow_id="w-rows"),
                 exo.InvalidOptionError, r"'int' for rows: expected a list of dicts", id="write-bad-rows"),
    pytest.param(lambda e: exo.run(write_without_effect.bind(), workflow_id="w-noeffect"),
                 exo.WriteNotAllowedError, r"not declared effect='transactional'. Add effect='transactional'",
                 id="write-without-effect"),
    pytest.param(lambda e: exo.context(), exo.NotInTaskError, r"only available inside a running task. Call it",
                 id="context-outside-task"),
    pytest.param(lambda e: exo.sql("delete from sales"), exo.QueryError, r"read queries only", id="sql-write"),
    # -- notebook magics, in a real InteractiveShell
    pytest.param(lambda e: magic(e, "%exoflow bogus"), UsageError,
                 r"Unknown sub-command 'bogus' for %exoflow. Use one of: init, task", id="magic-unknown-subcommand"),
    pytest.param(lambda e: magic(e, "%exoflow status --verbose"), UsageError,
                 r"(?s)unrecognized arguments: --verbose.*See %exoflow\? for every option", id="magic-unknown-option"),
    pytest.param(lambda e: magic(e, "%%exoflow task --checkpoint maybe\nmaybe_x = 1"), UsageError,
                 r"(?s)invalid choice: 'maybe'.*--checkpoint.*See %exoflow\?", id="magic-checkpoint-maybe"),
    pytest.param(lambda e: magic(e, "%%exoflow task --retries -1 --defer\nretry_x = 1"), UsageError,
                 r"for max_retries: expected an integer >= 0. Change the %%exoflow task options", id="magic-retries-negative"),
    pytest.param(lambda e: magic(e, "%exoflow resume nope"), UsageError, LIST, id="magic-resume-unknown"),
    pytest.param(lambda e: magic(e, "%exoflow status nope"), UsageError, LIST, id="magic-status-unknown"),
    pytest.param(lambda e: magic(e, "%exoflow task"), UsageError,
                 r"`task` is a cell magic: start the cell with %%exoflow task", id="magic-task-as-line"),
    pytest.param(_twice, UsageError, r"task name 'dup' is already used by another cell. Give this cell its own name",
                 id="magic-task-name-twice"),
    pytest.param(_same_output, UsageError,
                 r"`shared_out` is already an output of task cell 'shared_out'. .*rename it here", id="magic-output-twice"),
    pytest.param(lambda e: magic(e, "%%exoflow task --defer\nprint('hello')"), UsageError,
                 r"defines no names, so no other cell could use it. Assign its result", id="magic-no-outputs"),
    pytest.param(lambda e: magic(e, "%%exoflow task --defer --after ghost\nafter_x = 1"), UsageError,
                 r"--after names 'ghost', which is not a registered task cell.*run that cell first", id="magic-after-unknown"),
    pytest.param(lambda e: magic(e, "%%exoflow task --defer\nbroken = (1,"), UsageError,
                 r"does not parse .*fix it and run it again", id="magic-syntax-error"),
    pytest.param(lambda e: magic(e, "%exoflow init --store {} --workflow a/b".format(e.store)), UsageError,
                 r"Invalid workflow id 'a/b': use 1-200 letters", id="magic-init-bad-workflow"),
]


@pytest.mark.parametrize("case, error, message", CASES)
def test_bad_input(env, case: Case, error: type, message: str):
    before, env.last = env.last or snapshot(env), None  # the last case's "after" is this one's "before"
    with pytest.raises(error, match=message) as info:
        case(env)
    if isinstance(info.value, exo.ExoflowError):  # errors cross processes: they must pickle as themselves
        import pickle

        again = pickle.loads(pickle.dumps(info.value))
        assert type(again) is type(info.value) and str(again) == str(info.value)
    after = snapshot(env)
    assert_intact(before, after)
    env.last = after


def test_the_intact_check_sees_damage(env):
    """The check above can fail: a lost workflow, a lost row and a changed status are seen."""
    env.last = None
    exo.run(add.bind(1, 2), workflow_id="victim")
    before = snapshot(env)
    exo.delete("victim")
    with pytest.raises(AssertionError):
        assert_intact(before, snapshot(env))
    listed, api, tables = snapshot(env)
    fewer = dict(tables, **{"main.sales": (None, tables["main.sales"][1][1:])})
    with pytest.raises(AssertionError, match="rows of main.sales changed"):
        assert_intact((listed, api, tables), (listed, api, fewer))
    with pytest.raises(AssertionError):
        assert_intact((listed, api, tables), ({**listed, "ref": "FAILED"}, api, tables))
