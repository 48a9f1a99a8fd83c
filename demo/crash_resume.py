"""Crash-and-resume demo: kill -9 a workflow driver mid-run, resume it, prove exactly-once.

    python3 demo/crash_resume.py [--out DIR] [--kill-after N]

1. A *driver* subprocess (this file with ``--driver``) runs a 12-task workflow on a fresh
   store in ``DIR/store``: eight slow ``load_*`` tasks, a nondeterministic ``batch_tag``, a
   ``clean`` step without checkpoint, a transactional ``write_sales`` that puts rows into the
   DuckDB table ``sales`` with ``exo.context().write``, and a final ``report``.
2. Every task appends one line to ``DIR/counts/<task>`` each time it really runs. When N lines
   exist, this process freezes the driver's whole process tree (the driver and the local Ray
   it started) and kills it with SIGKILL: a crash, not a shutdown.
3. It then opens the same store itself and calls ``exo.resume``, and checks: tasks committed
   before the crash did not run again, the sales rows exist exactly once, every row carries the
   one stored value of the nondeterministic task, and the result equals a failure-free run's
   (computed here in plain Python).
4. It prints a summary and writes ``DIR/recovery.svg`` and ``DIR/summary.json``.

Exit status 0 only if every exactly-once check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import exoflow_kernel as exo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proctree import kill_tree  # noqa: E402  (freeze the tree, then SIGKILL it)

WORKFLOW_ID = "sales-demo"
REGIONS = ["eu", "us", "apac", "latam", "mea", "nordics", "uk", "japan"]
ROWS_PER_REGION = 250
LOAD_SECONDS = 0.5


# -- the workflow's plain logic (also used to compute the expected result) ------------------


def make_rows(region: str) -> list[dict]:
    """A region's sales: deterministic for a region, whatever process computes it."""
    rng = random.Random(f"sales-{region}")
    return [{"id": f"{region}-{i:04d}", "region": region, "amount": rng.randint(1, 500)}
            for i in range(ROWS_PER_REGION)]


def clean_rows(*batches: list[dict]) -> list[dict]:
    """Drop tiny orders, keep a stable order."""
    return sorted((r for batch in batches for r in batch if r["amount"] >= 5), key=lambda r: r["id"])


def summarize(rows: list[dict]) -> dict:
    return {"rows": len(rows), "total": sum(r["amount"] for r in rows),
            "by_region": {reg: sum(r["amount"] for r in rows if r["region"] == reg) for reg in REGIONS}}


def expected_result() -> dict:
    """What a failure-free run returns (minus the random batch tag), computed without the engine."""
    return summarize(clean_rows(*(make_rows(reg) for reg in REGIONS)))


# -- the tasks --------------------------------------------------------------------------------


def _ran(counts: str, task: str, note: str = "") -> None:
    """One line per real execution: how the demo knows what ran, and how often."""
    with open(os.path.join(counts, task), "a") as f:
        f.write(f"{os.getpid()} {time.time():.3f} {note}\n")


@exo.task
def load(region: str, counts: str) -> list[dict]:
    time.sleep(LOAD_SECONDS)  # a slow source
    rows = make_rows(region)
    _ran(counts, f"load_{region}")
    return rows


@exo.task(deterministic=False)
def batch_tag(counts: str) -> str:
    tag = uuid.uuid4().hex[:8]  # a different value on every execution
    _ran(counts, "batch_tag", tag)
    return tag


@exo.task(checkpoint=False)
def clean(counts: str, *batches: list[dict]) -> list[dict]:
    rows = clean_rows(*batches)
    _ran(counts, "clean")
    return rows


@exo.task(effect="transactional")
def write_sales(rows: list[dict], tag: str, counts: str) -> int:
    exo.context().write("sales", [{**r, "batch": tag} for r in rows])
    _ran(counts, "write_sales", f"attempt={exo.context().attempt}")
    return len(rows)


@exo.task
def report(rows: list[dict], written: int, tag: str, counts: str) -> dict:
    _ran(counts, "report")
    return {**summarize(rows), "written": written, "batch": tag}


TASKS = [f"load_{r}" for r in REGIONS] + ["batch_tag", "clean", "write_sales", "report"]


def build(counts: str):
    loads = [load.options(name=f"load_{reg}").bind(reg, counts) for reg in REGIONS]
    tag = batch_tag.bind(counts)
    rows = clean.bind(counts, *loads)
    written = write_sales.bind(rows, tag, counts)
    return report.bind(rows, written, tag, counts)


# -- the driver (a subprocess that gets killed) ---------------------------------------------------


def driver(out: Path) -> None:
    exo.init(out / "store")
    print(f"[driver pid {os.getpid()}] running workflow {WORKFLOW_ID!r}", flush=True)
    result = exo.run(build(str(out / "counts")), workflow_id=WORKFLOW_ID)
    print(f"[driver] finished without being killed: {result}", flush=True)


# -- the demo ---------------------------------------------------------------------------------------


def runs(counts: Path) -> Counter:
    """How many times each task really ran, from the counter files."""
    c: Counter = Counter()
    for task in TASKS:
        f = counts / task
        if f.exists():
            c[task] = len(f.read_text().splitlines())
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo-output", help="output folder (default ./demo-output)")
    ap.add_argument("--kill-after", type=int, default=5,
                    help="kill the driver once this many task executions happened (default 5, of 12)")
    ap.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out).absolute()

    if args.driver:
        driver(out)
        return 0

    store, counts = out / "store", out / "counts"
    for d in (store, counts):
        shutil.rmtree(d, ignore_errors=True)
    counts.mkdir(parents=True)
    for f in ("recovery.svg", "summary.json", "driver.log"):
        (out / f).unlink(missing_ok=True)

    # (a) the driver, in its own process
    print(f"== 1. starting a driver process: workflow {WORKFLOW_ID!r}, {len(TASKS)} tasks, store {store}")
    log = open(out / "driver.log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--driver", "--out", str(out)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    # (b) wait for some real progress, then kill -9 the driver and the Ray it started
    deadline = time.monotonic() + 300
    while sum(runs(counts).values()) < args.kill_after:
        if proc.poll() is not None:
            log.close()
            print((out / "driver.log").read_text()[-3000:])
            print(f"!! the driver exited (code {proc.returncode}) before {args.kill_after} tasks ran; "
                  "nothing was crashed", file=sys.stderr)
            return 2
        if time.monotonic() > deadline:
            kill_tree(proc.pid)
            print("!! no progress within 300 s; see driver.log", file=sys.stderr)
            return 2
        time.sleep(0.02)
    before = runs(counts)
    killed = kill_tree(proc.pid)
    proc.wait()
    log.close()
    print(f"== 2. after {time.monotonic() - t0:.1f} s, {sum(before.values())} task executions in: "
          f"kill -9 of the driver (pid {proc.pid}) and its {len(killed) - 1} Ray processes")
    print(f"      ran before the crash: {', '.join(sorted(before)) or '-'}")

    # (c) resume in this process: a fresh owner of the store
    print("== 3. exo.resume in a fresh process")
    exo.init(store)
    print(f"      status before resume: {exo.status(WORKFLOW_ID)}")
    t1 = time.monotonic()
    result = exo.resume(WORKFLOW_ID)
    print(f"      resumed in {time.monotonic() - t1:.1f} s; status now: {exo.status(WORKFLOW_ID)}")

    # (d) what happened, and the exactly-once checks
    lineage = {rec.task_id: rec for rec in exo.lineage(WORKFLOW_ID)}
    after = runs(counts)
    by_state: dict[str, list[str]] = {}
    for task in TASKS:
        by_state.setdefault(lineage[task].state if task in lineage else "missing", []).append(task)

    checks: list[tuple[str, bool, str]] = []

    def check(what: str, ok: bool, detail: str = "") -> None:
        checks.append((what, bool(ok), detail))

    reused = by_state.get("recovered", []) + by_state.get("skipped", [])
    again = [t for t in reused if after[t] != 1]
    check("tasks recovered or skipped ran exactly once (none ran again)", not again,
          f"ran again: {again}" if again else f"{len(reused)} tasks")
    never = [t for t in TASKS if after[t] == 0]
    check("every task ran at least once", not never, f"never ran: {never}" if never else "")
    final = exo.status(WORKFLOW_ID)
    check("workflow status is SUCCESSFUL", final == "SUCCESSFUL", final)

    expected = expected_result()
    count, distinct = exo.sql("select count(*), count(distinct id) from sales")[0]
    check("sales rows exist exactly once", count == distinct == expected["rows"],
          f"{count} rows, {distinct} distinct ids, expected {expected['rows']}")
    tags = exo.sql("select distinct batch from sales")
    stored_tag = exo.output(WORKFLOW_ID, task="batch_tag")
    check("nondeterministic batch_tag: one stored value, used by every row and the result",
          tags == [(stored_tag,)] and result.get("batch") == stored_tag,
          f"stored {stored_tag!r}, rows carry {[t[0] for t in tags]}, result has {result.get('batch')!r}")
    got = {k: result.get(k) for k in ("rows", "total", "by_region")}
    check("result equals a failure-free run's", got == expected and result.get("written") == expected["rows"],
          f"rows={result.get('rows')} total={result.get('total')} (expected {expected['rows']}, {expected['total']})")

    # (e) the recovery graph
    svg = Path(exo.graph(WORKFLOW_ID).render(filename="recovery", directory=str(out), format="svg",
                                             cleanup=True))

    print("== 4. summary")
    labels = ["recovered", "re-executed", "skipped", "committed", "ambiguous", "failed", "pending", "missing"]
    for state in labels + sorted(set(by_state) - set(labels)):
        if state in by_state:
            note = {"recovered": "loaded from a checkpoint", "re-executed": "run by the resume: started or queued before the crash",
                    "skipped": "not needed", "committed": "first dispatched by the resume"}.get(state, "")
            print(f"      {state:<12} {', '.join(by_state[state])}" + (f"   ({note})" if note else ""))
    print("      real executions per task (before crash -> total):")
    print("        " + ", ".join(f"{t} {before[t]}->{after[t]}" for t in TASKS))
    print(f"      sales table: {count} rows, {distinct} distinct ids, batch {stored_tag}")
    print(f"      result: rows={result['rows']} total={result['total']} written={result['written']}")
    failed = [c for c in checks if not c[1]]
    for what, ok, detail in checks:
        print(f"      [{'ok' if ok else 'FAIL'}] {what}" + (f" - {detail}" if detail else ""))

    summary = {
        "workflow_id": WORKFLOW_ID, "store": str(store), "killed_processes": killed,
        "states": {t: lineage[t].state for t in TASKS if t in lineage},
        "runs_before_crash": dict(before), "runs_total": dict(after),
        "sales": {"rows": count, "distinct_ids": distinct}, "result": result, "expected": expected,
        "checks": [{"check": w, "ok": ok, "detail": d} for w, ok, d in checks],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print("== 5. files written:")
    for f in (svg, out / "summary.json", out / "driver.log", store):
        print(f"      {f}")
    if shutil.which("exoflow"):
        print(f"   look again: exoflow --store {store} lineage {WORKFLOW_ID}")
    if failed:
        print(f"!! {len(failed)} exactly-once check(s) FAILED", file=sys.stderr)
        return 1
    print("all exactly-once checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
