"""The notebook face in real Jupyter kernels (jupyter_client): task cells, stale
re-runs, bad magics, and kill -9 of the kernel in a long cell then
``%exoflow resume`` in a fresh kernel. Exactly-once is checked by real counts
(each cell appends a line to a counter file when it really runs) and real
rows, never by our own status table."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psutil
import pytest
from jupyter_client import KernelManager

ROOT = Path(__file__).resolve().parent.parent
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="session")
def ray_cluster():
    """Each kernel starts its own Ray; this process needs none."""
    yield


@dataclass
class Reply:
    """What one execute request produced."""

    stdout: str = ""
    stderr: str = ""
    error: str = ""  # a traceback, or IPython's "UsageError: ..." line (sent on stderr)
    data: list[dict] = field(default_factory=list)


class Kernel:
    """A real ipykernel with ``jupyter_ext`` loaded, driven over ZMQ."""

    def __init__(self, cwd: Path, kernel_name: str = "python3", **env: str) -> None:
        full_env = {k: v for k, v in os.environ.items() if k != "EXOFLOW_STORE"}
        self.km = KernelManager(kernel_name=kernel_name)
        self.km.start_kernel(cwd=str(cwd), env={**full_env, "PYTHONPATH": str(ROOT), **env})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        if kernel_name == "python3":  # the ExoFlow kernel preloads the extension
            self.ok("%load_ext jupyter_ext")

    def send(self, code: str, cell_id: str | None = None) -> str:
        """Send a cell (with the front-end's cell id, as JupyterLab does); return the msg id."""
        content = dict(code=code, silent=False, store_history=True, user_expressions={}, allow_stdin=False,
                       stop_on_error=True)
        msg = self.kc.session.msg("execute_request", content, metadata={"cellId": cell_id or uuid.uuid4().hex})
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def wait(self, msg_id: str, timeout: float = 180) -> Reply:
        reply = Reply()
        while True:
            msg = self.kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content["name"] == "stdout":
                reply.stdout += content["text"]
            elif kind == "stream":
                reply.stderr += content["text"]
                reply.error += content["text"] if "UsageError" in content["text"] else ""
            elif kind == "error":
                reply.error = _ANSI.sub("", "\n".join(content["traceback"]))
            elif kind in ("display_data", "execute_result"):
                reply.data.append(content["data"])
            elif kind == "status" and content["execution_state"] == "idle":
                return reply

    def run(self, code: str, cell_id: str | None = None) -> Reply:
        return self.wait(self.send(code, cell_id))

    def pager(self, code: str) -> str:
        """What ``%magic?`` shows: it comes as a pager payload on the shell reply."""
        msg_id = self.send(code)
        self.wait(msg_id)
        while True:
            reply = self.kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                return "".join(p.get("data", {}).get("text/plain", "") for p in reply["content"]["payload"])

    def ok(self, code: str, cell_id: str | None = None) -> Reply:
        reply = self.run(code, cell_id)
        assert not reply.error, reply.error
        return reply

    def value(self, expr: str):
        return json.loads(self.ok(f"import json as _j; print(_j.dumps({expr}))").stdout.strip().splitlines()[-1])

    def kill(self) -> None:
        """kill -9 the kernel process (its Ray stays behind, as after a real crash)."""
        os.kill(self.km.provisioner.pid, signal.SIGKILL)
        self.km.provisioner.process.wait(timeout=30)
        self.kc.stop_channels()
        self.km.cleanup_resources()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


@pytest.fixture
def kernels(tmp_path):
    started: list[Kernel] = []

    def start(kernel_name: str = "python3", **env: str) -> Kernel:
        started.append(Kernel(tmp_path, kernel_name, **env))
        return started[-1]

    yield start
    for k in started:
        if k.km.is_alive():
            k.close()


@pytest.fixture
def exoflow_kernel(tmp_path, monkeypatch) -> str:
    """The "ExoFlow" kernelspec, installed under a temporary prefix; its name."""
    from exoflow_kernel import kernelspec

    prefix = tmp_path / "jupyter-prefix"
    assert kernelspec.main(["install", "--prefix", str(prefix)]) == 0
    spec = json.loads((prefix / "share/jupyter/kernels/exoflow/kernel.json").read_text())
    assert spec["display_name"] == "ExoFlow" and spec["argv"][-2:] == ["--ext", "jupyter_ext"]
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share/jupyter"))
    return "exoflow"


def counts(folder: Path) -> dict[str, int]:
    return {f.name: len(f.read_text().splitlines()) for f in folder.iterdir() if not f.name.endswith(".reached")}


HELPERS = """
import os, time
import exoflow_kernel as exo
COUNTERS = {counters!r}
def tick(name):
    with open(os.path.join(COUNTERS, name), "a") as f:
        f.write("ran\\n")
def double(v):
    return 2 * v
"""


def setup(k: Kernel, tmp_path: Path, workflow: str) -> Path:
    counters = tmp_path / "counters"
    counters.mkdir(exist_ok=True)
    k.ok(f"%exoflow init --store {tmp_path / 'store'} --workflow {workflow}")
    k.ok(HELPERS.format(counters=str(counters)))
    return counters


def test_task_cells_run_publish_and_rerun_only_what_changed(kernels, tmp_path):
    k = kernels()
    counters = setup(k, tmp_path, "nb")
    k.ok('%%exoflow task\ntick("a")\na = double(21)\nprint("a is", a)', cell_id="A")
    assert "a is 42" in k.ok("print('a is', a)").stdout
    k.ok('%%exoflow task\ntick("b")\nb = [a + i for i in range(3)]', cell_id="B")
    out = k.ok('%%exoflow task total\ntick("total")\ntotal = sum(b) + a', cell_id="T")
    assert k.value("[a, b, total]") == [42, [42, 43, 44], 171]
    assert counts(counters) == {"a": 1, "b": 1, "total": 1}

    out = k.ok('%%exoflow task\ntick("b")\nb = [a * i for i in range(3)]', cell_id="B")  # edit b
    assert "ran b, total" in out.stdout and "reused a" in out.stdout
    assert k.value("[a, b, total]") == [42, [0, 42, 84], 168]
    assert counts(counters) == {"a": 1, "b": 2, "total": 2}
    status = k.ok("%exoflow status").stdout
    assert re.search(r"a\s+recovered", status) and re.search(r"b\s+stale", status), status

    k.ok('%%exoflow task total\ntick("total")\ntotal = sum(b) + a', cell_id="T")  # unchanged: reused
    k.ok("%exoflow run")
    assert counts(counters) == {"a": 1, "b": 2, "total": 2}
    k.ok("del a, b, total")
    k.ok("%exoflow run")  # publishes every output again
    assert k.value("[a, b, total]") == [42, [0, 42, 84], 168]

    svg = k.ok("%exoflow graph").data
    assert svg and "image/svg+xml" in svg[0] and "total" in svg[0]["image/svg+xml"]
    lineage = k.ok("%exoflow lineage").data[0]["text/plain"]  # the table widget's text form
    assert lineage.startswith("task_id") and re.search(r"\ntotal\s+total\s+(committed|recovered|skipped)\s", lineage)


def test_shutting_the_kernel_down_stops_its_ray_and_lets_go_of_the_store(kernels, tmp_path):
    """Jupyter gives a kernel 5 s to exit before it kills it; ipykernel spends them
    SIGTERMing a local Ray. The extension stops its Ray first: the kernel exits by itself."""
    k = kernels()
    setup(k, tmp_path, "bye")
    k.ok('%%exoflow task\ntick("a")\na = 1')
    kernel = k.km.provisioner.process
    ray_procs = psutil.Process(kernel.pid).children(recursive=True)
    assert any("raylet" in p.name() for p in ray_procs), [p.name() for p in ray_procs]
    k.close()
    assert kernel.wait(timeout=30) == 0, f"the kernel did not exit by itself (exit {kernel.returncode})"
    _, alive = psutil.wait_procs(ray_procs, timeout=30)
    assert not alive, f"Ray processes the kernel started outlived it: {alive}"
    assert not (tmp_path / "store" / "owner.json").exists()
    assert duckdb.connect(str(tmp_path / "store" / "lineage.duckdb"), read_only=True).execute(
        "select status from exoflow.workflows where workflow_id = 'bye'").fetchall() == [("SUCCESSFUL",)]


BAD_MAGICS = [
    ("%exoflow bogus", "Unknown sub-command 'bogus'"),
    ("%exoflow run --fast", "unrecognized arguments: --fast"),
    ("%exoflow status nope", "No workflow 'nope'"),
    ("%exoflow run nope", "No workflow 'nope'"),
    ("%exoflow task", "`task` is a cell magic"),
    ("%%exoflow task --checkpoint sometimes\nz = 1", "invalid choice: 'sometimes'"),
    ("%%exoflow task --after ghost\nz = 1", "--after names 'ghost', which is not a registered task cell"),
    ("%%exoflow task\nprint(1)", "defines no names"),
    ("%%exoflow task --nondeterministic --checkpoint async\nz = 1", '"sync" for a task with deterministic=False'),
    ("%%exoflow task first\nother = 1", "already used by another cell"),
    ("%%exoflow task second\nfirst = 2", "`first` is already an output of task cell 'first'"),
    ("%%exoflow task\nwith lock:\n    v = 1", "uses lock from an ordinary cell"),
]


def test_bad_magics_say_what_to_do(kernels, tmp_path):
    k = kernels()
    setup(k, tmp_path, "errors")
    k.ok("%%exoflow task --defer\nfirst = 1", cell_id="F")
    k.ok("import threading\nlock = threading.Lock()")
    for code, message in BAD_MAGICS:
        error = k.run(code).error
        assert "UsageError" in error and message in error, f"{code!r} gave:\n{error}"
    help_text = _ANSI.sub("", k.pager("%exoflow?"))
    for usage in ("%exoflow init [--store DIR]", "%%exoflow task [--checkpoint", "%exoflow resume [ID]"):
        assert usage in help_text


NOTEBOOK = [
    ('%%exoflow task --defer\ntick("load")\nrows = [{"id": i, "v": i * i} for i in range(5)]', "L"),
    ('%%exoflow task save --effect transactional --defer\ntick("save")\nexo.context().write("sales", rows)\n'
     "saved = len(rows)", "S"),
    ('%%exoflow task --after save --defer\ntick("slow")\n'
     "if not os.path.exists(REACHED):\n    open(REACHED, 'w').close()\n    time.sleep(300)\n"
     'slow = sum(r["v"] for r in rows)', "W"),
    ('%%exoflow task --defer\ntick("final")\nreport = {"saved": saved, "slow": slow}', "R"),
]
EXPECTED = {"rows": [{"id": i, "v": i * i} for i in range(5)], "saved": 5, "slow": 30,
            "report": {"saved": 5, "slow": 30}}


def committed_tasks(store: Path, workflow: str) -> set[str]:
    with duckdb.connect(str(store / "lineage.duckdb"), read_only=True) as con:
        rows = con.execute("select distinct task_id from exoflow.task_log where workflow_id = ? "
                           "and state in ('committed', 'continued')", [workflow]).fetchall()
    return {r[0] for r in rows}


def wait_until_committed(store: Path, workflow: str, task: str) -> None:
    """Ask the live kernel's store through the CLI (a reader never blocks the owner)."""
    deadline = time.time() + 120
    while time.time() < deadline:
        out = subprocess.run([sys.executable, "-m", "exoflow_kernel.cli", "--store", str(store), "lineage",
                              workflow, "--json"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        states = {r["task_id"]: r["state"] for r in json.loads(out.stdout or "[]")} if out.returncode == 0 else {}
        if states.get(task) == "committed":
            return
        time.sleep(0.2)
    raise AssertionError(f"{task} never committed: {out.stderr[-2000:]}")


def test_kill_the_kernel_in_a_long_cell_then_resume_in_a_fresh_one(kernels, tmp_path, exoflow_kernel):
    k = kernels()
    counters = setup(k, tmp_path, "crash")
    k.ok(f"REACHED = {str(counters / 'slow.reached')!r}")
    for code, cell_id in NOTEBOOK:
        k.ok(code, cell_id)
    running = k.send("%exoflow run")
    deadline = time.time() + 180
    while not (counters / "slow.reached").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (counters / "slow.reached").exists(), k.wait(running, timeout=5).error
    wait_until_committed(tmp_path / "store", "crash", "save")  # so the crash hits after the effect's commit
    k.kill()
    before, committed = counts(counters), committed_tasks(tmp_path / "store", "crash")

    fresh = kernels(exoflow_kernel, EXOFLOW_STORE=str(tmp_path / "store"))  # no cell is run again by hand
    banner = fresh.ok(f"%exoflow init --store {tmp_path / 'store'} --workflow crash").stdout
    assert "left running by a dead kernel: crash. Resume with: %exoflow resume crash" in banner
    assert banner.count("left running") == 1
    out = fresh.ok("%exoflow resume")
    assert fresh.value("{n: globals()[n] for n in ['rows', 'saved', 'slow', 'report']}") == EXPECTED
    after = counts(counters)
    for task in committed:
        if task in before:
            assert after[task] == before[task], f"committed cell {task} ran again"
    assert "save" in committed and after["save"] == 1, "the committed transactional cell ran again"
    assert after["slow"] == 2 and after["final"] == 1 and max(after.values()) <= 2
    fresh.ok("import exoflow_kernel as exo")
    assert fresh.value('exo.sql("select count(*), count(distinct id) from sales")') == [[5, 5]]
    assert any("image/svg+xml" in d for d in out.data), "no recovery graph shown"
    assert "slow" in out.stdout or any("re-executed" in d.get("text/plain", "") for d in out.data)
