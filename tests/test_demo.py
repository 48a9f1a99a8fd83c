"""The main demo end to end (demo/etl_notebook.py, what scripts/demo.sh runs after set-up),
with a small data size: a real Jupyter kernel runs the ETL notebook, is killed with kill -9
(with its Ray) in the middle of the load cell, a fresh kernel resumes. The demo's own exit
status and summary are checked, and the rows are counted again here, in the store's DuckDB
file, against the raw Parquet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = 100_000


@pytest.fixture(scope="session")
def ray_cluster():
    """The demo's kernels start their own Ray; this process needs none."""
    yield


def test_demo_kills_the_kernel_mid_cell_and_resumes_exactly_once(tmp_path):
    out = tmp_path / "demo-output"
    env = {k: v for k, v in os.environ.items() if k != "EXOFLOW_STORE"}
    proc = subprocess.run([sys.executable, str(ROOT / "demo" / "etl_notebook.py"), "--out", str(out),
                           "--rows", str(ROWS)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    assert "all exactly-once checks passed" in proc.stdout
    assert "kill -9 after" in proc.stdout and "%exoflow resume" in proc.stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["checks"] and all(c["ok"] for c in summary["checks"]), summary["checks"]
    first = summary["first_kernel"]
    assert first["cell_error"] == "DeadKernelError"  # the cell really was cut off by the kill
    assert any(":raylet" in k for k in first["killed"]) and any(":gcs_server" in k for k in first["killed"])
    assert first["dead"] is True  # every process of the killed tree was gone afterwards

    # exactly once, counted again from the files the demo left
    store = Path(summary["store"])
    with duckdb.connect(str(store / "lineage.duckdb"), read_only=True) as con:
        expected = con.execute(f"select count(*) from read_parquet('{store.parent / 'data'}/*.parquet') "
                               "where status = 'paid' and amount_cents > 0").fetchone()[0]
        raw = con.execute(f"select count(*) from read_parquet('{store.parent / 'data'}/*.parquet')").fetchone()[0]
        rows, ids = con.execute("select count(*), count(distinct order_id) from orders").fetchone()
    assert raw == ROWS and 0 < expected < ROWS
    assert rows == ids == expected

    # real executions: committed before the kill -> ran once in all, and was recovered from its
    # checkpoint; cut off while running -> ran again once (the held last partition never committed)
    runs, before, states = summary["clean_runs_total"], summary["clean_runs_before_kill"], summary["states"]
    committed = [t for t in summary["committed_before_crash"] if t.startswith("part_")]
    assert committed and "part_3" not in committed
    assert all(runs[t] == 1 and states[t] == "recovered" for t in committed)
    assert sorted(runs) == [f"part_{p}" for p in range(4)]
    for t in set(runs) - set(committed):
        assert runs[t] == before.get(t, 0) + 1, (t, before, runs)
        assert states[t] in (("re-executed",) if before.get(t) else ("committed", "re-executed")), (t, states)
    assert states["daily"] == "committed"

    # the files it names
    assert "<svg" in (out / "recovery.svg").read_text()
    html = (out / "etl_duckdb.html").read_text()
    assert "kill -9 of this kernel" in html and "%exoflow resume" in html and "<svg" in html
    nb = nbformat.read(out / "etl_duckdb.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"{expected:,} rows, {expected:,} distinct ids, {expected:,} expected" in text
