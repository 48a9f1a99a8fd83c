"""The ``exoflow`` command line, run as a real subprocess against stores that real
workflow runs (in their own Python processes) made.

The last test is the one that matters most: a driver process owns the store and
commits a few hundred tasks while the CLI reads it, again and again, through the
owner's socket; the driver must finish with the right result and rows.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from exoflow_kernel.render import LEGEND

from conftest import ROOT, count, run_script

FIELDS = ["task_id", "name", "state", "attempts", "checkpoint", "effect", "started_at", "finished_at",
          "output_bytes"]
ETL_TASKS = ["load", "save", "double", "load.1", "save.1", "double.1", "load.2", "save.2", "double.2", "report"]


def exoflow(*args: str, store: Path | None = None, env: dict | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``python -m exoflow_kernel.cli`` (no $EXOFLOW_STORE unless ``env`` sets it)."""
    cmd = [sys.executable, "-m", "exoflow_kernel.cli"] + (["--store", str(store)] if store else []) + list(args)
    return subprocess.run(cmd, env=_env(env), capture_output=True, text=True, timeout=timeout)


def _env(extra: dict | None = None) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("EXOFLOW_STORE", "NO_COLOR")}
    return {**base, "PYTHONPATH": str(ROOT), **(extra or {})}


def marked_processes(mark: dict) -> list[psutil.Process]:
    """Processes whose environment carries ``mark`` (one variable). Read raw: Ray's agents
    retitle themselves over the start of their environment, which psutil then reads as empty."""
    (name, value), = mark.items()
    needle = f"\0{name}={value}\0".encode()
    found = []
    for proc in psutil.process_iter():
        try:
            if needle in b"\0" + Path(f"/proc/{proc.pid}/environ").read_bytes():
                found.append(proc)
        except OSError:  # gone, or not ours
            continue
    return found


def ok_json(*args: str, store: Path) -> object:
    """Run a --json command that must succeed; its parsed output."""
    proc = exoflow(*args, "--json", store=store)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def on_tty(*args: str, store: Path) -> tuple[int, str]:
    """Run the CLI with stdout on a pseudo-terminal, as a user's shell would."""
    master, slave = pty.openpty()
    cmd = [sys.executable, "-m", "exoflow_kernel.cli", "--store", str(store), *args]
    proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.DEVNULL, env=_env())
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode()


# -- a store with a finished and a failed workflow, made by another process --------------

ETL_DRIVER = """
import json, os
import exoflow_kernel as exo

exo.init()

@exo.task
def load(i):
    return list(range(i + 1))

@exo.task(effect="transactional")
def save(xs):
    exo.context().write("sales", [{"n": len(xs), "total": sum(xs)}])
    return sum(xs)

@exo.task(checkpoint=False)
def double(x):
    return 2 * x

@exo.task
def report(*totals):
    return {"sum": sum(totals)}

@exo.task(max_retries=0)
def boom():
    raise ValueError("boom on purpose")

print(json.dumps(exo.run(report.bind(*[double.bind(save.bind(load.bind(i))) for i in range(1, 4)]),
                         workflow_id="etl")))
try:
    exo.run(report.bind(boom.bind()), workflow_id="broken")
except exo.ExoflowError as exc:
    print("broken:", type(exc).__name__)
records = [r._asdict() for r in exo.lineage("etl")]
with open(os.environ["LINEAGE_OUT"], "w") as f:
    json.dump(records, f, default=lambda d: d.isoformat())
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """A store an ordinary driver process filled: ``etl`` (SUCCESSFUL) and ``broken`` (FAILED)."""
    tmp = tmp_path_factory.mktemp("cli")
    store, expected = tmp / "store", tmp / "lineage.json"
    proc = run_script(ETL_DRIVER, store, env={"LINEAGE_OUT": str(expected)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0]) == {"sum": 2 * (1 + 3 + 6)}
    assert "broken: WorkflowFailedError" in proc.stdout
    return {"store": store, "lineage": json.loads(expected.read_text()), "tmp": tmp}


def test_list_shows_every_workflow_with_its_status(made):
    store = made["store"]
    assert ok_json("list", store=store) == [{"workflow_id": "etl", "status": "SUCCESSFUL"},
                                            {"workflow_id": "broken", "status": "FAILED"}]
    assert ok_json("list", "--status", "failed", store=store) == [{"workflow_id": "broken", "status": "FAILED"}]
    assert ok_json("list", "--status", "RUNNING", store=store) == []

    proc = exoflow("list", store=store)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["WORKFLOW", "STATUS"]
    assert [line.split() for line in lines[1:]] == [["etl", "SUCCESSFUL"], ["broken", "FAILED"]]
    assert lines[1].index("SUCCESSFUL") == lines[2].index("FAILED") == lines[0].index("STATUS")  # aligned
    assert "\x1b[" not in proc.stdout  # not a terminal: no colours


def test_store_comes_from_env_then_dot_exoflow(made, tmp_path):
    proc = exoflow("list", "--json", env={"EXOFLOW_STORE": str(made["store"])})
    assert proc.returncode == 0, proc.stderr
    assert [w["workflow_id"] for w in json.loads(proc.stdout)] == ["etl", "broken"]

    proc = subprocess.run([sys.executable, "-m", "exoflow_kernel.cli", "list"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"exoflow: error: Cannot use the ExoFlow store at {tmp_path / '.exoflow'}")
    assert not (tmp_path / ".exoflow").exists()  # looking never creates a store


def _imported_after(store: Path, *commands: list[str]) -> tuple[int, set[str]]:
    """Run CLI commands in one fresh interpreter: (exit code, top-level modules imported)."""
    code = textwrap.dedent(f"""
        import sys
        from exoflow_kernel import cli
        rc = 0
        for args in {[list(c) for c in commands]!r}:
            rc = rc or cli.main(["--store", {str(store)!r}, *args])
        print(rc, " ".join(sorted({{m.partition(".")[0] for m in sys.modules}})))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rc, _, modules = proc.stdout.splitlines()[-1].partition(" ")
    return int(rc), set(modules.split())


def test_read_commands_never_import_ray(made):
    """Looking at a store is a DuckDB query: Ray's import (seconds on a busy machine) is paid
    only by commands that run a workflow."""
    svg = str(made["tmp"] / "read-only.svg")
    rc, modules = _imported_after(made["store"], ["lineage", "etl", "--json"], ["graph", "etl", "-o", svg])
    assert rc == 0
    assert "duckdb" in modules and "graphviz" in modules  # the probe sees what was imported
    assert "ray" not in modules


def test_status_imports_only_what_it_needs(made):
    """`exoflow status` is typed often, on big stores: no picture library, no pickler for
    values, no graph or array library (each costs milliseconds at start)."""
    rc, modules = _imported_after(made["store"], ["status", "etl", "--json"])
    assert rc == 0
    assert "duckdb" in modules
    assert not modules & {"ray", "graphviz", "cloudpickle", "networkx", "numpy", "pyarrow", "pandas"}


def test_console_script_is_installed(made):
    exe = shutil.which("exoflow")
    if exe is None:
        pytest.skip("the package is not pip-installed here, so there is no `exoflow` script")
    proc = subprocess.run([exe, "--store", str(made["store"]), "list", "--json"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 2


def test_status_counts_tasks_by_state_and_shows_the_error(made):
    store = made["store"]
    info = ok_json("status", "etl", store=store)
    assert info == {"workflow_id": "etl", "status": "SUCCESSFUL", "error": None, "tasks": 10,
                    "states": {"committed": 10}, "store": str(store)}

    broken = ok_json("status", "broken", store=store)
    assert broken["status"] == "FAILED"
    assert "boom on purpose" in broken["error"]
    assert broken["states"] == {"pending": 1, "failed": 1}

    proc = exoflow("status", "broken", store=store)
    assert proc.returncode == 0, proc.stderr
    fields = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line and ":" not in line.split()[0])
    assert fields["status"] == "FAILED"
    assert fields["tasks"] == "2: 1 pending, 1 failed"
    assert "boom on purpose" in fields["error"]


def test_lineage_json_is_exactly_exo_lineage(made):
    store = made["store"]
    records = ok_json("lineage", "etl", store=store)
    assert records == made["lineage"]  # what exo.lineage gave the driver, field for field
    assert [r["task_id"] for r in records] == ETL_TASKS
    for r in records:
        assert list(r) == FIELDS
        assert (r["state"], r["attempts"]) == ("committed", 1)
        assert datetime.fromisoformat(r["started_at"]) <= datetime.fromisoformat(r["finished_at"])
    by_id = {r["task_id"]: r for r in records}
    assert by_id["save.1"]["effect"] == "transactional" and by_id["load"]["effect"] is None
    assert by_id["double"]["checkpoint"] not in ("sync", "async")  # checkpoint=False
    assert by_id["double"]["output_bytes"] is None  # nothing was stored for it
    assert all(by_id[t]["output_bytes"] > 0 for t in ETL_TASKS if not t.startswith("double"))


def test_lineage_table_is_aligned_with_a_legend(made):
    proc = exoflow("lineage", "broken", store=made["store"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[0]
    assert header.split() == ["TASK", "NAME", "STATE", "ATTEMPTS", "CHECKPOINT", "EFFECT", "STARTED", "TOOK",
                              "BYTES"]
    rows = {line.split()[0]: line for line in lines[1:3]}
    assert rows["boom"][header.index("STATE"):].startswith("failed")
    assert rows["report"][header.index("STATE"):].startswith("pending")
    assert lines[4] == f"pending: {LEGEND['pending'][1]} · failed: {LEGEND['failed'][1]}"


def test_colours_come_from_the_legend_on_a_terminal_only(made):
    rc, text = on_tty("lineage", "broken", store=made["store"])
    assert rc == 0
    for state in ("failed", "pending"):
        r, g, b = (int(LEGEND[state][0][i:i + 2], 16) for i in (1, 3, 5))
        assert f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{state}\x1b[0m" in text
    rc, text = on_tty("list", store=made["store"])
    assert rc == 0
    assert "\x1b[48;2;165;214;167m\x1b[38;2;0;0;0mSUCCESSFUL" in text  # SUCCESSFUL wears "committed"


def test_graph_writes_an_svg_with_every_task_and_the_legend(made, tmp_path):
    out = tmp_path / "etl.svg"
    proc = exoflow("graph", "etl", "-o", str(out), store=made["store"])
    assert proc.returncode == 0, proc.stderr
    root = ET.parse(out).getroot()  # valid XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert set(ETL_TASKS) <= texts
    assert "legend" in texts
    assert set(LEGEND) <= texts and {meaning for _, meaning in LEGEND.values()} <= texts
    fills = {p.get("fill") for p in root.iter("{http://www.w3.org/2000/svg}path")}
    assert LEGEND["committed"][0] in fills

    png, dot = tmp_path / "etl.png", tmp_path / "etl.gv"
    assert exoflow("graph", "etl", "-o", str(png), store=made["store"]).returncode == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")  # format taken from the suffix
    assert exoflow("graph", "etl", "-o", str(dot), "--format", "dot", store=made["store"]).returncode == 0
    assert dot.read_text().lstrip().startswith("digraph")


@pytest.mark.parametrize("args", [["status", "nope"], ["lineage", "nope", "--json"], ["resume", "nope"],
                                  ["graph", "nope", "-o", "{tmp}/nope.svg"]])
def test_unknown_workflow_is_a_clear_error_and_harms_nothing(made, tmp_path, args):
    store = made["store"]
    before = ok_json("list", store=store)
    proc = exoflow(*[a.format(tmp=tmp_path) for a in args], store=store)
    assert proc.returncode == 2
    assert proc.stderr == (f"exoflow: error: No workflow 'nope' in the store at {store}. Check the id with "
                           "exo.list_workflows() (or `exoflow list`), or point to the right store with "
                           "exo.init(store=...) / --store.\n")
    assert proc.stdout == ""
    assert not (tmp_path / "nope.svg").exists()
    assert ok_json("list", store=store) == before
    assert ok_json("lineage", "etl", store=store) == made["lineage"]


def test_unknown_store_is_a_clear_error(tmp_path):
    proc = exoflow("status", "etl", store=tmp_path / "no-such-store")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"exoflow: error: Cannot use the ExoFlow store at {tmp_path / 'no-such-store'}: "
                                  "there is no ExoFlow store here")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "no-such-store").exists()


def test_resume_of_a_finished_workflow_gives_its_stored_result(made):
    rc, text = on_tty("resume", "etl", store=made["store"])
    assert rc == 0
    assert f"resume etl [{'#' * 30}] 10/10 tasks durable\r\n" in text  # the bar, finished
    assert "result: {'sum': 20}" in text
    assert ok_json("lineage", "etl", store=made["store"]) == made["lineage"]  # nothing ran again


# -- resume after a driver was killed ----------------------------------------------------

# A driver script's head: counts executions, and kills its own driver once (a marker file).
DRIVER_HEAD = """
import os, signal, time
import exoflow_kernel as exo

exo.init()
COUNTS, MARKER = {counts!r}, {marker!r}

def tally(name):
    with open(os.path.join(COUNTS, name), "a") as f:
        f.write("x\\n")

def kill_driver_once(driver_pid):
    if not os.path.exists(MARKER):  # first run only: kill the driver mid-workflow
        open(MARKER, "w").close()
        os.kill(driver_pid, signal.SIGKILL)
        time.sleep(60)
"""
CRASHING_DRIVER = DRIVER_HEAD + """
@exo.task
def pre(i):
    tally("pre")
    return 10 * i

@exo.task(wait_until_committed=("pre",))
def crash(driver_pid, *xs):
    tally("crash")
    kill_driver_once(driver_pid)
    return sum(xs)

@exo.task
def post(x):
    tally("post")
    return x + 1

exo.run(post.bind(crash.bind(os.getpid(), *[pre.bind(i) for i in range(3)])), workflow_id="crashy")
"""


def test_resume_finishes_a_killed_workflow_reusing_its_checkpoints(tmp_path, counter_dir):
    store = tmp_path / "store"
    code = CRASHING_DRIVER.format(counts=str(counter_dir), marker=str(tmp_path / "crashed"))
    proc = run_script(code, store)
    assert proc.returncode == -9, proc.stderr
    assert ok_json("status", "crashy", store=store)["status"] == "RESUMABLE"

    mark = {"EXOFLOW_TEST_MARK": str(tmp_path)}  # inherited by every process the CLI's Ray starts
    proc = exoflow("resume", "crashy", store=store, env=mark, timeout=300)
    assert proc.returncode == 0, proc.stderr
    _, alive = psutil.wait_procs(marked_processes(mark), timeout=30)
    assert not alive, f"Ray processes `exoflow resume` started outlived it: {[p.name() for p in alive]}"
    lines = proc.stdout.splitlines()
    assert lines[-3] == "resume crashy: 5/5 tasks durable"  # plain progress lines, not a bar
    assert all(line.startswith("resume crashy: ") for line in lines[:-2])
    assert lines[-2].startswith("workflow crashy: SUCCESSFUL (")
    assert lines[-1] == "result: 31"

    assert (count(counter_dir, "pre"), count(counter_dir, "crash"), count(counter_dir, "post")) == (3, 2, 1)
    states = {r["task_id"]: r["state"] for r in ok_json("lineage", "crashy", store=store)}
    assert [states[t] for t in ("pre", "pre.1", "pre.2", "post")] == ["recovered"] * 3 + ["committed"]
    assert states["crash"] in ("re-executed", "committed")  # re-executed if its dispatch was logged
    assert ok_json("status", "crashy", store=store)["status"] == "SUCCESSFUL"


OFF_CHAIN_DRIVER = DRIVER_HEAD + """
@exo.task(checkpoint=False)
def a():
    tally("a")
    return 1

@exo.task
def b(x):
    tally("b")
    return x + 1

@exo.task(checkpoint=False)
def c(x):
    tally("c")
    return x * 10

@exo.task(wait_until_committed=("b",))
def d(driver_pid, x):
    tally("d")
    kill_driver_once(driver_pid)
    return x + 5

exo.run(d.bind(os.getpid(), c.bind(b.bind(a.bind()))), workflow_id="offchain")
"""


def test_resume_reruns_a_checkpoint_false_task_only_when_something_needs_its_value(tmp_path, counter_dir):
    # a and c run untracked (checkpoint=False): a commits with b, c has not when d kills the driver.
    store = tmp_path / "store"
    proc = run_script(OFF_CHAIN_DRIVER.format(counts=str(counter_dir), marker=str(tmp_path / "crashed")), store)
    assert proc.returncode == -9, proc.stderr
    proc = exoflow("resume", "offchain", store=store, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "result: 25"
    assert {n: count(counter_dir, n) for n in "abcd"} == {"a": 1, "b": 1, "c": 2, "d": 2}
    states = {r["task_id"]: r["state"] for r in ok_json("lineage", "offchain", store=store)}
    assert states == {"a": "skipped", "b": "recovered", "c": "re-executed", "d": "re-executed"}, states


# -- reading while another process owns the store and commits -----------------------------

STAGES, WIDTH = 5, 60
BUSY_DRIVER = """
import json, time
from pathlib import Path
import exoflow_kernel as exo

exo.init()
GATES = Path({gates!r})
STAGES, WIDTH = {stages}, {width}

@exo.task(num_cpus=0)
def gate(k, previous):
    # Holds stage k back until the test has read the store; gives up after 5 minutes.
    deadline = time.time() + 300
    while not (GATES / f"go.{{k}}").exists():
        if time.time() > deadline:
            raise TimeoutError(f"gate {{k}} never opened")
        time.sleep(0.05)
    return k

@exo.task(effect="transactional")
def work(k, i, opened, previous):
    exo.context().write("hits", [{{"stage": k, "i": i}}])
    return previous + i

@exo.task
def total(*xs):
    return sum(xs)

g, values = None, [0] * WIDTH
for k in range(STAGES):
    g = gate.bind(k, g)
    values = [work.bind(k, i, g, values[i]) for i in range(WIDTH)]
future = exo.run_async(total.bind(*values), workflow_id="busy")
print("started", flush=True)
result = future.result()
rows = exo.sql("select count(*), count(distinct (stage, i)), sum(i) from hits")[0]
print(json.dumps({{"result": result, "rows": list(rows)}}), flush=True)
"""


def _stage(task_id: str) -> int:
    """Which stage a task of the busy workflow belongs to (total: after the last)."""
    if task_id == "total":
        return STAGES
    if task_id.startswith("gate"):
        return int(task_id.partition(".")[2] or 0)
    return int(task_id.partition(".")[2] or 0) // WIDTH


def test_reads_while_another_process_owns_the_store_and_commits(tmp_path):
    store, gates = tmp_path / "store", tmp_path / "gates"
    gates.mkdir()
    out, err = tmp_path / "driver.out", tmp_path / "driver.err"
    code = textwrap.dedent(BUSY_DRIVER.format(gates=str(gates), stages=STAGES, width=WIDTH))
    with out.open("w") as fout, err.open("w") as ferr:
        driver = subprocess.Popen([sys.executable, "-c", code], stdout=fout, stderr=ferr,
                                  env=_env({"EXOFLOW_STORE": str(store)}))
    try:
        _wait_until_started(driver, out, err)
        _poll_while_running(store, gates, tmp_path)
        assert driver.wait(timeout=300) == 0, err.read_text()
    finally:
        for k in range(STAGES):  # let a driver we left behind finish on its own
            (gates / f"go.{k}").touch()
        if driver.poll() is None:
            try:
                driver.wait(timeout=120)
            except subprocess.TimeoutExpired:
                driver.kill()

    final = json.loads(out.read_text().splitlines()[-1])
    assert final["result"] == STAGES * sum(range(WIDTH))
    assert final["rows"] == [STAGES * WIDTH, STAGES * WIDTH, STAGES * sum(range(WIDTH))]  # each write once

    assert ok_json("list", store=store) == [{"workflow_id": "busy", "status": "SUCCESSFUL"}]
    records = ok_json("lineage", "busy", store=store)
    assert len(records) == STAGES * (WIDTH + 1) + 1
    assert {(r["state"], r["attempts"]) for r in records} == {("committed", 1)}


def _wait_until_started(driver: subprocess.Popen, out: Path, err: Path) -> None:
    """The driver owns the store once it printed "started" (run_async returned)."""
    deadline = time.monotonic() + 240
    while "started" not in out.read_text():
        assert driver.poll() is None, f"the driver died before starting: {err.read_text()}"
        assert time.monotonic() < deadline, "the driver did not start within 4 minutes"
        time.sleep(0.2)


def _poll_while_running(store: Path, gates: Path, tmp_path: Path) -> None:
    """Read status and lineage before opening each stage; stage k cannot have run yet."""
    total = STAGES * (WIDTH + 1) + 1
    durable_before = 0
    for k in range(STAGES):
        status = ok_json("status", "busy", store=store)
        assert (status["status"], status["tasks"]) == ("RUNNING", total)

        records = ok_json("lineage", "busy", store=store)
        assert len(records) == total and all(list(r) == FIELDS for r in records)
        assert {r["state"] for r in records} <= set(LEGEND)
        for r in records:
            if _stage(r["task_id"]) >= k and not r["task_id"].startswith("gate"):
                # Dispatched to Ray maybe (it then waits there for the gate's value), never committed.
                assert r["state"] in ("pending", "running"), r
        durable = sum(r["state"] == "committed" for r in records)
        assert durable >= durable_before
        durable_before = durable

        if k == 2:
            _check_other_verbs_while_running(store, tmp_path)
        (gates / f"go.{k}").touch()


def _check_other_verbs_while_running(store: Path, tmp_path: Path) -> None:
    """list and graph work remotely; a second resume is refused without touching the owner."""
    assert ok_json("list", store=store) == [{"workflow_id": "busy", "status": "RUNNING"}]
    proc = exoflow("graph", "busy", "-o", str(tmp_path / "busy.svg"), store=store)
    assert proc.returncode == 0, proc.stderr
    assert "work.299" in (tmp_path / "busy.svg").read_text()
    proc = exoflow("resume", "busy", store=store)
    assert proc.returncode == 2
    assert proc.stderr.startswith("exoflow: error: Workflow 'busy' is owned by a live process (pid ")
    assert "Traceback" not in proc.stderr
