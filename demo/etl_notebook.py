"""The headless notebook demo: run the ETL notebook in a real Jupyter kernel, kill -9 that
kernel in the middle of its long load cell, resume in a fresh kernel, prove exactly-once.

    python3 demo/etl_notebook.py [--out DIR] [--rows N] [--kill-after K]

1. A real ipykernel (jupyter_client, through nbclient) runs ``notebooks/etl_duckdb.ipynb``
   from the top: set-up, 1,000,000 orders as Parquet, four partition cells, and the
   ``daily`` cell that runs the four transactional partition loads and then itself.
2. While that cell runs, the CLI (``exoflow lineage etl --json``, which asks the live kernel)
   is polled; once K partitions have committed, the kernel's whole process tree (the
   kernel and the local Ray it started) is frozen and killed with SIGKILL. In that first
   kernel each partition takes a second longer and the last one is held until the kill,
   so the kill always lands inside the cell; the resumed kernel runs at full speed.
3. A fresh kernel runs ``%exoflow init`` on the same store and ``%exoflow resume`` (no
   notebook cell is re-run by hand), then the notebook's own exactly-once check.
4. This process checks the result itself: rows counted in the store's DuckDB file against
   the raw Parquet, one real execution per partition committed before the crash (each
   ``etl.clean`` call appends a line to a trace file), the outputs restored in the fresh
   kernel, the workflow SUCCESSFUL, the dead kernel's processes gone.
5. It writes to DIR (default ./demo-output): ``recovery.svg`` (the recovery graph),
   ``etl_duckdb.html`` and ``etl_duckdb.ipynb`` (the executed notebook: first kernel up to
   the kill, then the fresh kernel), ``summary.json``; the store stays in ``DIR/work``.

Exit status 0 only if every check passed (1: a check failed, 2: the demo could not run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError
from nbformat.v4 import new_code_cell, new_markdown_cell, new_output

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK = NOTEBOOKS / "etl_duckdb.ipynb"
WORKFLOW = "etl"
PARTS = [f"part_{p}" for p in range(4)]
sys.path.insert(0, str(HERE))
from proctree import all_dead, kill_tree  # noqa: E402

import exoflow_kernel as exo  # noqa: E402
from exoflow_kernel.api import open_store  # noqa: E402  (what `exoflow` uses: role="reader")

CELL_TIMEOUT = 600


class DemoError(Exception):
    """The demo could not run (not an exactly-once failure)."""


def say(msg: str) -> None:
    print(msg, flush=True)


# -- the notebook ------------------------------------------------------------------------------


def load_notebook(rows: int) -> tuple[nbformat.NotebookNode, int, int]:
    """The notebook, its generate cell set to ``rows``; (nb, index of the daily cell, index of the check)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.metadata.pop("widgets", None)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    gen = [i for i in code if "etl.generate(" in nb.cells[i].source]
    daily = [i for i in code if nb.cells[i].source.startswith("%%exoflow task daily")]
    check = [i for i in code if "select count(*), count(distinct order_id) from orders" in nb.cells[i].source]
    if not (gen and daily and check):
        raise DemoError(f"{NOTEBOOK} no longer has the generate / daily / check cells this demo drives")
    src, n = re.subn(r"rows=[\d_]+", f"rows={rows:_}", nb.cells[gen[0]].source)
    if n != 1:
        raise DemoError("cannot set the row count in the generate cell")
    nb.cells[gen[0]].source = src
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    return nb, daily[0], check[0]


def states_now(store: Path) -> dict[str, str]:
    """Task states of the workflow, read as the CLI reads them: while a kernel owns the store,
    as a *reader* whose questions the owner answers over its socket (never touching its file
    lock); once the owner is dead, by opening the store."""
    try:
        open_store(store, role="reader")
        return {r.task_id: r.state for r in exo.lineage(WORKFLOW)}
    except exo.ExoflowError:
        return {}  # no workflow yet, or the owner is busy starting
    finally:
        exo.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EXOFLOW_STORE", "ETL_HOLD_PARTS", "ETL_SLOW_SECONDS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return {**env, **extra}


def _client(nb: nbformat.NotebookNode) -> NotebookClient:
    return NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", record_timing=False,
                          store_widget_state=False, allow_errors=False,
                          resources={"metadata": {"path": str(NOTEBOOKS)}})


def _short(exc: Exception, lines: int = 12) -> str:
    """The end of a cell's traceback, without terminal colours."""
    return "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[-lines:])


def reap(tree: list[psutil.Process]) -> None:
    """SIGKILL whatever of a kernel's process tree is still running (its Ray, after a shutdown)."""
    for p in tree:
        try:
            if p.is_running():
                p.kill()
        except psutil.NoSuchProcess:
            pass


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# -- 1 + 2: the first kernel, killed in the daily cell -------------------------------------------


async def first_kernel(nb, daily: int, work: Path, trace: Path, kill_after: int) -> dict:
    """Run cells [0, daily] in a real kernel; kill -9 it (and its Ray) inside the daily cell."""
    env = _env(ETL_TRACE_DIR=str(trace), ETL_SLOW_SECONDS="1", ETL_HOLD_PARTS="3")
    client = _client(nb)
    info: dict = {}
    log = open(work / "kernel1.log", "w")  # the kernel's own stdout/stderr (Ray's start-up lines)
    async with client.async_setup_kernel(env=env, stdout=log, stderr=log):
        pid = client.km.provisioner.pid
        info["kernel_pid"] = pid
        say(f"== 1. kernel 1 (pid {pid}) runs {NOTEBOOK.relative_to(ROOT)} cell by cell")
        for i in range(daily):
            cell = nb.cells[i]
            if cell.cell_type == "code":
                t0 = time.monotonic()
                try:
                    await client.async_execute_cell(cell, i)
                except CellExecutionError as exc:
                    reap(_tree(pid))
                    raise DemoError(f"cell {i} failed in the first kernel:\n{_short(exc)}") from None
                say(f"      [{i:2}] {cell.source.splitlines()[0][:60]:<60} {time.monotonic() - t0:5.1f} s")
        said = "".join(o.get("text", "") for c in nb.cells[:daily] if c.cell_type == "code" for o in c.outputs)
        found = re.search(r"ExoFlow: store (\S+), workflow 'etl'", said)
        if not found:
            raise DemoError(f"the notebook's %exoflow init did not name its store; it printed:\n{said[-2000:]}")
        store = info["store"] = Path(found.group(1))
        say(f"      [{daily:2}] {nb.cells[daily].source.splitlines()[0]}   <- the long transform/load cell")
        running = asyncio.ensure_future(client.async_execute_cell(nb.cells[daily], daily))
        t0 = time.monotonic()
        states: dict[str, str] = {}
        while True:  # poll the live kernel's store through the CLI
            states = await asyncio.to_thread(states_now, store)
            if sum(states.get(p) == "committed" for p in PARTS) >= kill_after:
                break
            if running.done():
                running.result()  # raises what went wrong
                raise DemoError("the daily cell finished before the kill (the last partition should be held)")
            if time.monotonic() - t0 > CELL_TIMEOUT:
                raise DemoError(f"no partition committed within {CELL_TIMEOUT} s; states: {states}")
            await asyncio.sleep(0.2)
        tree = _tree(pid)
        info["processes"] = sorted({p.name() for p in tree if p.is_running()})
        info["killed"] = kill_tree(pid)  # kill -9 of the kernel and of every Ray process under it
        info["killed_after_s"] = round(time.monotonic() - t0, 1)
        info["states_seen"] = states
        say(f"== 2. kill -9 after {info['killed_after_s']} s in the cell: kernel pid {pid} and "
            f"{len(info['killed']) - 1} processes under it ({', '.join(info['processes'])})")
        try:
            await asyncio.wait_for(running, timeout=60)
        except (DeadKernelError, CellExecutionError, asyncio.TimeoutError, RuntimeError) as exc:
            info["cell_error"] = type(exc).__name__
        nb.cells[daily].outputs.append(new_output(
            "stream", name="stderr",
            text=f"[demo] kill -9 of this kernel (pid {pid}) and its {len(info['killed']) - 1} Ray processes "
                 f"while the cell ran; task states then: {states}\n"))
        info["dead"] = all_dead([int(k.split(":")[0]) for k in info["killed"]])
    return info


# -- 3: the fresh kernel -------------------------------------------------------------------------


RESUME_MD = """## The first kernel was killed here

The demo killed the kernel that ran the cell above, and the local Ray it had started, with `kill -9`
while the cell ran ({when}). Everything below ran in a **fresh kernel**: no cell above was run again
by hand. `%exoflow resume` rebuilds the workflow from the cell sources stored in the lineage store,
reuses every committed checkpoint, runs what the crash cut off, and puts the cells' outputs back into
this kernel's namespace."""

CHECK_MD = """The notebook's own check, in the fresh kernel (the ordinary cells' names are defined again here,
since a fresh kernel only gets the task cells' outputs back)."""


def fresh_cells(store: Path, data: Path, when: str, check_source: str) -> list:
    return [
        new_markdown_cell(RESUME_MD.format(when=when)),
        new_code_cell(f"%load_ext jupyter_ext\n%exoflow init --store {store} --workflow {WORKFLOW}"),
        new_code_cell("%exoflow resume"),
        new_markdown_cell(CHECK_MD),
        new_code_cell(f"import exoflow_kernel as exo\nimport etl_support as etl\nDATA = {str(data)!r}"),
        new_code_cell(check_source),
        new_code_cell("restored = {n: globals()[n].num_rows for n in ['orders_0', 'orders_1', 'orders_2', 'orders_3', "
                      "'daily']}\nprint('restored outputs:', restored)"),
    ]


async def second_kernel(nb, start: int, work: Path, trace: Path) -> dict:
    client = _client(nb)
    info: dict = {}
    log = open(work / "kernel2.log", "w")
    async with client.async_setup_kernel(env=_env(ETL_TRACE_DIR=str(trace)), stdout=log, stderr=log):
        pid = client.km.provisioner.pid
        info["kernel_pid"] = pid
        say(f"== 3. kernel 2 (pid {pid}): %exoflow init, %exoflow resume, the notebook's check")
        tree: list[psutil.Process] = []
        try:
            for i in range(start, len(nb.cells)):
                cell = nb.cells[i]
                if cell.cell_type == "code":
                    t0 = time.monotonic()
                    await client.async_execute_cell(cell, i)
                    say(f"      [{i:2}] {cell.source.splitlines()[0][:60]:<60} {time.monotonic() - t0:5.1f} s")
                    tree = _tree(pid) or tree
        except CellExecutionError as exc:
            info["error"] = _short(exc)
            say(f"!! a cell failed in the fresh kernel:\n{info['error']}")
        finally:
            tree = _tree(pid) or tree
            info["text"] = "".join(o.get("text", "") for c in nb.cells[start:] if c.cell_type == "code"
                                   for o in c.outputs)
    reap(tree)  # a graceful shutdown stops Ray too; whatever did not stop goes now
    return info


# -- 4 + 5: checks and files -----------------------------------------------------------------------


def traced(trace: Path) -> Counter:
    """Real executions of etl.clean per partition file (one line per call)."""
    c: Counter = Counter()
    f = trace / "clean.log"
    if f.exists():
        for line in f.read_text().splitlines():
            c[f"part_{line.split()[0]}"] += 1
    return c


def export_html(nb, path: Path) -> None:
    """The executed notebook as HTML: widgets shown as their SVG/HTML fallback (no widget state)."""
    from nbconvert import HTMLExporter

    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    ray_log = re.compile(r"(?m)^\d{4}-\d\d-\d\d [\d:,]+\s+(INFO|WARNING) [\w.]+:\d+ -- .*\n?")
    for c in nb.cells:
        for o in c.get("outputs", []):
            o.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
            if o.get("output_type") == "stream":
                o["text"] = ray_log.sub("", o["text"])  # Ray's start-up lines: the kernel's, not the notebook's
        c["outputs"] = [o for o in c.get("outputs", []) if o.get("output_type") != "stream" or o["text"]]
    body, _ = HTMLExporter().from_notebook_node(nb)
    path.write_text(body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo-output", help="output folder (default ./demo-output)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="orders to generate (default 1,000,000)")
    ap.add_argument("--kill-after", type=int, default=1, choices=(1, 2, 3),
                    help="kill once this many of the 4 partition loads committed (default 1)")
    args = ap.parse_args(argv)
    out = Path(args.out).absolute()
    work, trace = out / "work", out / "work" / "trace"
    shutil.rmtree(work, ignore_errors=True)
    for name in ("recovery.svg", "etl_duckdb.html", "etl_duckdb.ipynb", "summary.json"):
        (out / name).unlink(missing_ok=True)
    trace.mkdir(parents=True)
    t_start = time.monotonic()
    try:
        for attempt in (1, 2, 3):
            nb, daily, check = load_notebook(args.rows)
            try:
                first = asyncio.run(first_kernel(nb, daily, work, trace, args.kill_after))
                break
            except DemoError as exc:
                # Ray 2.60's raylet aborts if its dashboard agent takes over 15 s to start (hard-coded),
                # and ray.init then says "timed out during startup": it happens on an overloaded machine
                if attempt == 3 or "timed out during startup" not in str(exc):
                    raise
                say("!! Ray could not start in time (is the machine overloaded?); starting kernel 1 again")
                shutil.rmtree(work, ignore_errors=True)
                trace.mkdir(parents=True)
        store = first["store"]
        before = traced(trace)
        after_crash = states_now(store)  # a reader: the owner is dead, the CLI simply opens the store
        committed = sorted(t for t, s in after_crash.items() if s == "committed")
        say(f"      committed before the crash: {', '.join(committed) or '-'}")
        cells = nb.cells[:daily + 1]
        when = ", ".join(f"{t} {s}" for t, s in first["states_seen"].items() if t in PARTS)
        nb.cells = cells + fresh_cells(store, store.parent / "data", when, nb.cells[check].source)
        for attempt in (1, 2, 3):
            for c in nb.cells[daily + 1:]:
                if c.cell_type == "code":
                    c.outputs, c.execution_count = [], None
            second = asyncio.run(second_kernel(nb, daily + 1, work, trace))
            if attempt == 3 or "timed out during startup" not in second.get("error", ""):
                break
            say("!! Ray could not start in time (is the machine overloaded?); starting kernel 2 again")
    except DemoError as exc:
        print(f"!! {exc}", file=sys.stderr)
        return 2
    after = traced(trace)

    # -- the checks: real rows, real executions, nothing taken from the engine's word alone
    checks: list[tuple[str, bool, str]] = []

    def check(what: str, ok: bool, detail: str = "") -> None:
        checks.append((what, bool(ok), detail))

    check("the killed kernel and all its Ray processes are gone", first["dead"], f"{len(first['killed'])} processes")
    exo.init(store)  # both kernels are gone: this process opens the store (no Ray needed)
    try:
        final = exo.status(WORKFLOW)
        states = {r.task_id: r.state for r in exo.lineage(WORKFLOW)}
        svg = Path(exo.graph(WORKFLOW).render(filename="recovery", directory=str(out), format="svg", cleanup=True))
    finally:
        exo.close()
    check("workflow SUCCESSFUL after the resume", final == "SUCCESSFUL", final)
    with duckdb.connect(str(store / "lineage.duckdb"), read_only=True) as con:
        def one(query: str) -> tuple:
            try:
                return con.execute(query).fetchone()
            except duckdb.Error as exc:  # e.g. a table that was never created
                say(f"!! {query}: {str(exc).splitlines()[0]}")
                return (-1, -1)

        parquet = f"read_parquet('{store.parent / 'data'}/orders-*.parquet')"
        expected = one(f"select count(*) from {parquet} where status = 'paid' and amount_cents > 0")[0]
        raw_rows = one(f"select count(*) from {parquet}")[0]
        rows, ids = one("select count(*), count(distinct order_id) from orders")
        daily_orders = one("select sum(orders) from daily_revenue")[0]
    check("raw data: the requested number of orders as Parquet", raw_rows == args.rows, f"{raw_rows:,} rows")
    check("every order loaded exactly once (rows == distinct ids == expected)", rows == ids == expected > 0,
          f"{rows:,} rows, {ids:,} distinct ids, {expected:,} expected")
    check("daily_revenue counts every order once", daily_orders == expected > 0, f"{daily_orders or 0:,} orders")
    again = [p for p in committed if p in PARTS and after[p] != 1]
    check("partitions committed before the crash never ran again", committed and not again,
          f"ran again: {again}" if again else f"{', '.join(p for p in committed if p in PARTS)}: 1 execution each")
    check("every partition ran", all(after[p] >= 1 for p in PARTS), ", ".join(f"{p} {after[p]}" for p in PARTS))
    restored = re.search(r"restored outputs: (\{.*\})", second["text"])
    restored_ok = False
    if restored:
        values = json.loads(restored.group(1).replace("'", '"'))
        restored_ok = sum(values[f"orders_{p}"] for p in range(4)) == expected and values["daily"] > 0
    check("the fresh kernel got every task cell's output back", restored_ok, restored.group(1) if restored else "")
    check("no cell failed in the fresh kernel", "error" not in second, second.get("error", "")[-500:])

    # -- files
    check("recovery graph written", svg.exists() and "<svg" in svg.read_text(), str(svg))
    nbformat.write(nb, out / "etl_duckdb.ipynb")
    export_html(nb, out / "etl_duckdb.html")

    kept = work / store.parent.name  # the notebook's folder (store + Parquet) moves into DIR/work
    shutil.move(str(store.parent), str(kept))
    store = kept / "store"

    say("== 4. summary")
    by_state: dict[str, list[str]] = {}
    for task, state in states.items():
        if task != "__notebook__":
            by_state.setdefault(state, []).append(task)
    notes = {"recovered": "loaded from a checkpoint", "re-executed": "cut off by the kill, ran again",
             "committed": "first run by the resume", "skipped": "not needed"}
    for state, tasks in by_state.items():
        say(f"      {state:<12} {', '.join(tasks)}" + (f"   ({notes[state]})" if state in notes else ""))
    say("      real executions of clean() per partition (before the kill -> total): "
        + ", ".join(f"{p} {before[p]}->{after[p]}" for p in PARTS))
    say(f"      orders: {rows:,} rows, {ids:,} distinct ids, {expected:,} expected from {raw_rows:,} raw orders")
    for what, ok, detail in checks:
        say(f"      [{'ok' if ok else 'FAIL'}] {what}" + (f" - {detail}" if detail else ""))
    summary = {"workflow_id": WORKFLOW, "store": str(store), "rows": args.rows, "first_kernel": first,
               "second_kernel": {"kernel_pid": second["kernel_pid"]}, "committed_before_crash": committed,
               "states": states, "clean_runs_before_kill": dict(before), "clean_runs_total": dict(after),
               "orders": {"rows": rows, "distinct_ids": ids, "expected": expected}, "seconds": round(time.monotonic() - t_start, 1),
               "checks": [{"check": w, "ok": ok, "detail": d} for w, ok, d in checks]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    say("== 5. files written:")
    for name in ("recovery.svg", "etl_duckdb.html", "etl_duckdb.ipynb", "summary.json"):
        say(f"      {out / name}")
    say(f"   look again: exoflow --store {store} lineage {WORKFLOW}")
    failed = [c for c in checks if not c[1]]
    if failed:
        print(f"!! {len(failed)} exactly-once check(s) FAILED", file=sys.stderr)
        return 1
    say(f"all exactly-once checks passed ({time.monotonic() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
