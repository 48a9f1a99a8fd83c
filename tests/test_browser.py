"""The quickstart notebook in a real JupyterLab, driven in Debian's chromium by Playwright;
and a task cell waiting for an event, whose button the browser clicks.

JupyterLab runs on 127.0.0.1 (random port, a token) over a temporary root that
holds a copy of notebooks/quickstart.ipynb set to the "ExoFlow" kernel, whose
kernelspec is installed under a temporary prefix (JUPYTER_PATH). The page runs
every cell from the Run menu; the test then waits (bounded) for the widgets and
checks them in the DOM: the DAG widget (an ipywidgets view, not a static
fallback) shows every task with its state, the lineage table too. A screenshot
goes to tests/artifacts/quickstart.png. Playwright never downloads a browser:
it launches /usr/bin/chromium (scripts/setup.sh installs it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_MS = 300_000  # the whole notebook, Ray start included, on a busy 2-core machine

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                "(scripts/setup.sh installs it with apt-get; it could not here)")


EVENT_CELLS = [
    "%exoflow init --store ./store --workflow approvals",
    "%%exoflow task\nprice = 1200",
    "%%exoflow task approve --event approved\ndecision = ('approved' if approved else 'rejected', price)",
    "print('decision:', decision)",
]


@pytest.fixture(scope="session")
def ray_cluster():
    """The notebook's kernel starts its own Ray; this process needs none."""
    yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server over a temp root with the quickstart notebook; yields its URL and token."""
    from exoflow_kernel import kernelspec

    root, prefix, home = tmp_path / "root", tmp_path / "prefix", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no pop-up asking about news
    kernelspec.install(prefix=str(prefix))
    nb = json.loads((ROOT / "notebooks" / "quickstart.ipynb").read_text())
    nb["metadata"]["kernelspec"] = {"display_name": "ExoFlow", "language": "python", "name": kernelspec.KERNEL_NAME}
    for cell in nb["cells"]:  # start from a notebook that was never run: every output must come from this page
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (root / "quickstart.ipynb").write_text(json.dumps(nb))
    events = {**nb, "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                               "outputs": [], "source": src} for i, src in enumerate(EVENT_CELLS)]}
    (root / "events.ipynb").write_text(json.dumps(events))

    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "EXOFLOW_STORE"}
    env.update(JUPYTER_PATH=str(prefix / "share" / "jupyter"), JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), PYTHONPATH=str(ROOT), HOME=str(home))
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", "--ServerApp.allow_root=True", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise AssertionError(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, token
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # jupyter shuts its kernels down on SIGINT (twice: no prompt)
            time.sleep(0.5)
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
        log.close()


@contextmanager
def notebook_running(lab: tuple[str, str], name: str):
    """Open ``name`` in JupyterLab in Chromium on its ExoFlow kernel, click Run All Cells,
    yield the page; if the test fails, keep a screenshot of what the page showed."""
    from playwright.sync_api import sync_playwright

    url, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.set_default_timeout(120_000)
            page.goto(f"{url}/lab/tree/{name}.ipynb?token={token}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for()
            page.locator(".jp-Toolbar-kernelName", has_text="ExoFlow").first.wait_for()  # the notebook's kernel
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for()
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            yield page
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / f"{name}-failed.png"))
            raise
        finally:
            browser.close()


def assert_no_error_output(page) -> None:
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    assert errors.count() == 0, errors.first.inner_text()


def test_quickstart_runs_in_jupyterlab_and_the_dag_widget_shows_the_states(lab):
    with notebook_running(lab, "quickstart") as page:
        # the last cell's lineage table means every cell above ran without an error
        table = page.locator(".jupyter-widgets.exoflow-lineage table.exoflow-lineage")
        table.wait_for(timeout=RUN_TIMEOUT_MS)
        assert_no_error_output(page)

        # the DAG widgets are live ipywidgets views (not the static fallback), one per run
        dags = page.locator(".jupyter-widgets.exoflow-dag")
        assert dags.count() >= 5, dags.count()
        graph = dags.nth(3)  # `%exoflow graph`, after the three task cells
        graph.scroll_into_view_if_needed()
        texts = graph.locator("svg text").all_text_contents()
        for task in ("rows", "save", "total"):
            assert task in texts, texts
        header = graph.locator(".exoflow-progress").inner_text()
        assert "SUCCESSFUL" in header and "3 tasks" in header, header
        assert texts.count("committed") >= 3, texts  # 2 tasks + the legend

        last = dags.last  # `%exoflow run` after a helper of `total` changed
        last_texts = last.locator("svg text").all_text_contents()
        assert "stale" in last_texts and "recovered" in last_texts, last_texts
        states = table.locator("td.exoflow-state").all_inner_texts()
        assert states[:3] == ["recovered", "recovered", "stale"], states

        page.keyboard.press("Control+b")  # hide the file browser: more room for the notebook
        graph.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(500)  # let the last repaint land before the picture
        page.screenshot(path=str(ARTIFACTS / "quickstart.png"))
    assert (ARTIFACTS / "quickstart.png").stat().st_size > 10_000


def test_a_task_cell_waits_for_the_event_until_chromium_clicks_its_button(lab):
    with notebook_running(lab, "events") as page:
        button = page.locator(".exoflow-events button.exoflow-event-button", has_text="approved")
        button.wait_for(timeout=RUN_TIMEOUT_MS)
        page.locator(".exoflow-event-note", has_text="waits for event 'approved'").wait_for()
        page.wait_for_timeout(2000)  # it really waits: the next cell has not run
        printed = page.locator(".jp-OutputArea-output", has_text="decision:")
        assert printed.count() == 0, printed.first.inner_text()
        page.screenshot(path=str(ARTIFACTS / "event-waiting.png"))

        button.click()
        printed.first.wait_for(timeout=RUN_TIMEOUT_MS)
        assert "decision: ('approved', 1200)" in printed.first.inner_text()
        assert_no_error_output(page)
        arrived = page.locator(".jp-OutputArea-output", has_text="event 'approved' arrived and is durable")
        assert arrived.count() == 1
        assert page.locator(".exoflow-events button.exoflow-event-button").count() == 0, "the button stays after"
        dag = page.locator(".jupyter-widgets.exoflow-dag").last
        header = dag.locator(".exoflow-progress").inner_text()
        assert "SUCCESSFUL" in header, header
        texts = dag.locator("svg text").all_text_contents()
        assert "approve" in texts, texts
        page.screenshot(path=str(ARTIFACTS / "event-clicked.png"))
