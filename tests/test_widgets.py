"""The notebook's widgets in real kernels (jupyter_client): the live DAG view while
task cells run, the recovery graph after ``%exoflow resume``, the lineage table,
and how each degrades (SVG / HTML / text beside the widget view; plain text in
terminal IPython). Checked on the messages a front-end would get: display data,
the in-place update at the end, and the widget's comm updates while it runs."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import test_notebook_kernel as tnk  # the Kernel driver (a module import: its tests are not collected twice)
from test_notebook_kernel import kernels  # noqa: F401  (fixture)
from exoflow_kernel.render import LEGEND

ROOT = Path(__file__).resolve().parent.parent
WIDGET = "application/vnd.jupyter.widget-view+json"
COLOUR = {state: colour for state, (colour, _) in LEGEND.items()}


@pytest.fixture(scope="session")
def ray_cluster():
    """Each kernel starts its own Ray; this process needs none."""
    yield


@dataclass
class Transcript:
    """Every iopub message one execute request caused, sorted by kind."""

    stdout: str = ""
    error: str = ""
    displays: list[dict] = field(default_factory=list)  # display_data: {"data", "transient"}
    updates: list[dict] = field(default_factory=list)  # update_display_data
    comm_values: list[str] = field(default_factory=list)  # every "value" a widget was set to

    def final(self) -> dict:
        """The bundle of the last display (a live view's final picture)."""
        return self.displays[-1]["data"]


def transcript(k: tnk.Kernel, code: str, timeout: float = 180) -> Transcript:
    msg_id = k.send(code)
    out = Transcript()
    while True:
        msg = k.kc.get_iopub_msg(timeout=timeout)
        kind, content = msg["msg_type"], msg["content"]
        if kind == "comm_msg":  # may come from the view's poller thread: keep them all
            value = content.get("data", {}).get("state", {}).get("value")
            if isinstance(value, str):
                out.comm_values.append(value)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if kind == "stream" and content["name"] == "stdout":
            out.stdout += content["text"]
        elif kind == "stream" and "UsageError" in content["text"]:
            out.error += content["text"]
        elif kind == "error":
            out.error = tnk._ANSI.sub("", "\n".join(content["traceback"]))
        elif kind in ("display_data", "execute_result"):
            out.displays.append(content)
        elif kind == "update_display_data":
            out.updates.append(content)
        elif kind == "status" and content["execution_state"] == "idle":
            return out


def ok(k: tnk.Kernel, code: str) -> Transcript:
    out = transcript(k, code)
    assert not out.error, out.error
    return out


def svg_text(svg: str) -> list[str]:
    """The text nodes of an SVG (what a reader sees)."""
    return [html.unescape(t).strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


def node_colour(svg: str, task: str) -> str:
    """The fill of the box whose first label line is ``task``."""
    for group in re.findall(r'<g id="node\d+" class="node">(.*?)</g>', svg, re.S):
        texts = svg_text(group)
        if texts and texts[0] == task:
            return re.search(r'<path fill="([^"]+)"', group).group(1)
    raise AssertionError(f"no node {task!r} in the SVG: {svg_text(svg)}")


@pytest.fixture
def kernel(kernels, tmp_path):
    k = kernels()
    k.ok(f"%exoflow init --store {tmp_path / 'store'} --workflow w")
    k.ok("import time\nimport exoflow_kernel as exo")
    return k


def test_live_view_updates_while_cells_run_and_keeps_the_final_graph(kernel):
    ok(kernel, "%%exoflow task --defer\nrows = list(range(5))")
    ok(kernel, "%%exoflow task --defer\ntime.sleep(1.5)\ntotal = sum(rows)")
    out = ok(kernel, "%exoflow run")
    live, final = [d["data"] for d in out.displays]  # the live view, then the final picture
    model = live[WIDGET]["model_id"]
    assert live == {WIDGET: live[WIDGET], "text/plain": ""}, "while it runs, the view is the widget alone"
    did = out.displays[0]["transient"]["display_id"]
    assert [u["data"] for u in out.updates if u["transient"]["display_id"] == did] == [{"text/plain": ""}]
    assert final[WIDGET]["model_id"] == model, "the final picture is the same widget"
    svg = final["image/svg+xml"]
    texts = svg_text(svg)
    for task in ("rows", "total"):
        assert task in texts and node_colour(svg, task) == COLOUR["committed"], texts
    assert "committed" in texts and "legend" in texts
    assert "<svg" in final["text/html"] and "exoflow-progress" in final["text/html"]
    text = final["text/plain"]
    assert text.startswith("workflow w: SUCCESSFUL;") and "elapsed" in text, text
    assert re.search(r"^rows\s+committed\s+1$", text, re.M) and re.search(r"^total\s+committed\s+1$", text, re.M)

    # live: while `total` slept, the poller pushed a picture with it running, then the committed one
    running = [v for v in out.comm_values if "<svg" in v and COLOUR["running"] in v]
    assert running, "the view never showed a running task"
    assert any("exoflow-elapsed" in v and "running, elapsed" in v for v in out.comm_values)
    assert "ran rows, total" in out.stdout

    cell = ok(kernel, "%%exoflow task\ndoubled = total * 2")  # a task cell shows the live view too
    assert "doubled" in svg_text(cell.final()["image/svg+xml"])
    assert kernel.value("doubled") == 20


def test_recovery_graph_after_resume_and_the_lineage_table(kernel, tmp_path):
    flag = tmp_path / "fixed"
    ok(kernel, f"FLAG = {str(flag)!r}\nimport os")
    ok(kernel, "%%exoflow task --defer\nbase = 21")
    ok(kernel, "%%exoflow task --defer\nif not os.path.exists(FLAG):\n    raise RuntimeError('not yet')\n"
               "answer = base * 2")
    failed = transcript(kernel, "%exoflow run")
    assert "not yet" in failed.error
    svg = failed.final()["image/svg+xml"]
    assert node_colour(svg, "answer") == COLOUR["failed"] and node_colour(svg, "base") == COLOUR["committed"]

    flag.touch()
    out = ok(kernel, "%exoflow resume")
    final = out.final()
    svg, text = final["image/svg+xml"], final["text/plain"]
    assert node_colour(svg, "base") == COLOUR["recovered"], svg_text(svg)
    assert node_colour(svg, "answer") == COLOUR["re-executed"], svg_text(svg)
    for state in ("recovered", "re-executed", "skipped", "ambiguous", "stale"):  # the legend names them all
        assert state in svg_text(svg) and LEGEND[state][1] in svg_text(svg), state
        assert f'fill="{COLOUR[state]}"' in svg, state
    assert text.startswith("recovery of w: SUCCESSFUL;"), text
    assert re.search(r"^base\s+recovered\s", text, re.M) and re.search(r"^answer\s+re-executed\s", text, re.M)
    assert kernel.value("answer") == 42

    table = ok(kernel, "%exoflow lineage")
    (shown,) = table.displays
    data = shown["data"]
    assert WIDGET in data
    assert data["text/plain"].startswith("task_id") and re.search(r"^answer\s+answer\s+re-executed\s", data["text/plain"], re.M)
    table_html = data["text/html"]
    assert table_html.startswith('<table class="exoflow-lineage">') and "<th>output_bytes</th>" in table_html
    assert f'style="background:{COLOUR["re-executed"]}">re-executed</td>' in table_html
    assert f'style="background:{COLOUR["recovered"]}">recovered</td>' in table_html
    assert any('class="exoflow-lineage"' in v for v in table.comm_values + [data["text/html"]])


def test_plain_ipython_gets_text_not_widgets(tmp_path):
    """Terminal IPython has no widget front-end: the magics print the text forms."""
    script = tmp_path / "plain.ipy"
    script.write_text(textwrap.dedent(f"""\
        %load_ext jupyter_ext
        %exoflow init --store {tmp_path / 'store'} --workflow plain
        get_ipython().run_cell_magic("exoflow", "task", "x = 6 * 7")
        print("x =", x)
        %exoflow graph
        %exoflow lineage
        """))
    env = {**{k: v for k, v in os.environ.items() if k != "EXOFLOW_STORE"}, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "IPython", "--no-banner", "--colors=NoColor", str(script)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x = 42" in out
    assert re.search(r"^workflow plain: SUCCESSFUL; 1 task: 1 committed; elapsed \d+\.\d s$", out, re.M), out
    assert re.search(r"^x\s+committed\s+1$", out, re.M), out
    assert re.search(r"^task_id\s+name\s+state", out, re.M) and "Widget" not in out and "<svg" not in out
