"""Events in notebooks: ``%%exoflow task NAME --event EVENT`` in real kernels (jupyter_client).

The cell waits for the event with a button beside its live view. The test clicks
the button the way JupyterLab does (a ``comm_msg`` with ``{"event": "click"}`` on
the shell channel) *while the cell still runs*: the kernel must handle it although
its main thread is blocked in the run, or the cell never ends. The event is then
durable: a fresh kernel that resumes after ``kill -9`` shows no button and does
not run the waiting cell again (counted by real executions). In terminal IPython
the cell prints the ``exo.send_event`` line to run and waits in the background.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import test_notebook_kernel as tnk  # the Kernel driver (a module import: its tests are not collected twice)

ROOT = Path(__file__).resolve().parent.parent
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def kernels(tmp_path, ray_address):
    """Start real kernels (``tnk.Kernel``) that join the test session's Ray (conftest's
    ``ray_address``: a Ray per kernel costs a start-up each); shut down what is left at the end."""
    started: list[tnk.Kernel] = []

    def start() -> tnk.Kernel:
        started.append(tnk.Kernel(tmp_path, EXOFLOW_RAY_ADDRESS=ray_address))
        return started[-1]

    yield start
    for k in started:
        if k.km.is_alive():
            k.close()


class Run:
    """What one execute request caused; ``click`` names a button to click once it appears."""

    def __init__(self, k: tnk.Kernel, code: str, click: str | None = None, timeout: float = 240,
                 cell_id: str | None = None) -> None:
        self.stdout, self.error, self.displays, self.buttons, self.clicked = "", "", [], {}, None
        msg_id = k.send(code, cell_id)
        deadline = time.monotonic() + timeout
        while True:
            msg = k.kc.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
            kind, content = msg["msg_type"], msg["content"]
            if kind == "comm_open" and content["data"]["state"].get("_model_name") == "ButtonModel":
                state = content["data"]["state"]
                self.buttons[state.get("description")] = content["comm_id"]
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if kind == "display_data" and click in self.buttons and self.clicked is None:
                # the button is on the page: what JupyterLab sends when it is clicked, while this cell still runs
                k.kc.shell_channel.send(k.kc.session.msg("comm_msg", {
                    "comm_id": self.buttons[click], "data": {"method": "custom", "content": {"event": "click"}}}))
                self.clicked = time.monotonic()
            if kind == "stream" and content["name"] == "stdout":
                self.stdout += content["text"]
            elif kind == "stream" and "UsageError" in content["text"]:
                self.error += content["text"]
            elif kind == "error":
                self.error = tnk._ANSI.sub("", "\n".join(content["traceback"]))
            elif kind == "display_data":
                self.displays.append(content["data"])
            elif kind == "status" and content["execution_state"] == "idle":
                assert not self.error, self.error
                return


def counted(folder: Path, name: str) -> int:
    f = folder / name
    return len(f.read_text().splitlines()) if f.exists() else 0


APPROVE = """%%exoflow task approve --event approved
open(COUNTS + '/approve', 'a').write('x\\n')
decision = ('approved' if approved else 'rejected', price)
"""


def test_clicking_the_button_sends_the_event_while_the_cell_waits(kernels, tmp_path):
    k = kernels()
    k.ok(f"%exoflow init --store {tmp_path / 'store'} --workflow trip")
    k.ok(f"import exoflow_kernel as exo\nCOUNTS = {str(tmp_path)!r}")
    k.ok("%%exoflow task\nprice = 1200")

    run = Run(k, APPROVE, click="approved", cell_id="approve-cell")
    assert run.clicked is not None, f"no 'approved' button was shown: {run.buttons}"
    assert "event 'approved' arrived and is durable" in run.stdout, run.stdout
    assert k.value("decision") == ["approved", 1200]
    assert counted(tmp_path, "approve") == 1
    # the buttons were shown live (widget only) and blanked; the final picture is the DAG view
    live = [d for d in run.displays if d.get("text/plain") == "" and WIDGET in d]
    assert len(live) == 2, run.displays
    final = run.displays[-1]
    assert re.search(r"^approve\s+committed\s+1$", final["text/plain"], re.M), final["text/plain"]
    assert k.value("[r[0] for r in exo.sql(\"select name from exoflow.events where workflow_id = 'trip'\")]") == ["approved"]

    # the event is durable: the same cell again neither asks nor runs
    again = Run(k, APPROVE, cell_id="approve-cell")
    assert again.buttons == {} and counted(tmp_path, "approve") == 1
    assert "arrived" not in again.stdout


def test_a_fresh_kernel_resumes_without_asking_again(kernels, tmp_path):
    store, counts, go = tmp_path / "store", tmp_path, tmp_path / "go"
    k = kernels()
    k.ok(f"%exoflow init --store {store} --workflow trip")
    k.ok(f"import os, time\nCOUNTS = {str(counts)!r}\nGO = {str(go)!r}")
    k.ok("%%exoflow task\nprice = 900")
    # kill -9 while the cell waits: nobody clicked, so the fresh kernel asks again (and its button works too)
    k.send(APPROVE)
    wait_for_comm(k, "RUNNING</span>")  # the live view shows the workflow running (waiting) in the store
    k.kill()
    assert counted(counts, "approve") == 0

    k2 = kernels()
    k2.ok(f"%exoflow init --store {store} --workflow trip")
    resumed = Run(k2, "%exoflow resume", click="approved")
    assert resumed.clicked is not None, f"the resumed run did not ask for the event: {resumed.buttons}"
    assert k2.value("decision") == ["approved", 900] and counted(counts, "approve") == 1

    # a slow cell after the approval; kill -9 the kernel in the middle of it
    k2.ok(f"import os, time\nCOUNTS = {str(counts)!r}\nGO = {str(go)!r}")
    k2.send("%%exoflow task\nopen(COUNTS + '/ship', 'a').write('x\\n')\nwhile not os.path.exists(GO):\n"
            "    time.sleep(0.1)\nshipped = decision[0] == 'approved'")
    deadline = time.monotonic() + 180
    while counted(counts, "ship") == 0:
        assert time.monotonic() < deadline, "the slow cell never started"
        time.sleep(0.2)
    k2.kill()

    go.touch()
    k3 = kernels()
    k3.ok(f"%exoflow init --store {store} --workflow trip")
    last = Run(k3, "%exoflow resume")
    assert last.buttons == {}, "the event was sent before the crash: a resumed kernel must not ask again"
    assert "arrived" not in last.stdout
    assert k3.value("shipped") is True and k3.value("decision") == ["approved", 900]
    assert counted(counts, "approve") == 1, "the approved cell committed before the crash: never again"
    assert counted(counts, "ship") == 2
    assert re.search(r"^approve\s+recovered\s", last.displays[-1]["text/plain"], re.M), last.displays[-1]["text/plain"]


def wait_for_comm(k: tnk.Kernel, text: str, timeout: float = 240) -> None:
    """Read iopub until a widget is set to a value containing ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"no widget ever showed {text!r}"
        try:
            msg = k.kc.get_iopub_msg(timeout=1)
        except Exception:
            continue
        value = msg["content"].get("data", {}).get("state", {}).get("value") if msg["msg_type"] == "comm_msg" else None
        if isinstance(value, str) and text in value:
            return


def test_terminal_ipython_prints_the_command_and_waits_in_the_background(tmp_path):
    script = tmp_path / "plain.ipy"
    script.write_text(textwrap.dedent(f"""\
        %load_ext jupyter_ext
        %exoflow init --store {tmp_path / 'store'} --workflow plain
        import time
        import exoflow_kernel as exo
        get_ipython().run_cell_magic("exoflow", "task approve --event approved", "decision = approved")
        for _ in range(600):
            if exo.list_workflows():
                break
            time.sleep(0.1)
        print("before:", "decision" in globals())
        exo.send_event('plain', 'approved', 'yes')
        for _ in range(600):
            if "decision" in globals():
                break
            time.sleep(0.1)
        print("decision =", decision)
        """))
    env = {**{k: v for k, v in os.environ.items() if k != "EXOFLOW_STORE"}, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "IPython", "--no-banner", "--colors=NoColor", str(script)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "task cell 'approve' waits for event 'approved' of workflow 'plain'" in out, out
    assert "    exo.send_event('plain', 'approved', True)" in out, out
    assert "before: False" in out and "decision = yes" in out, out
    assert "Widget" not in out
