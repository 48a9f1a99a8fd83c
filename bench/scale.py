"""Scale: a 100,000-task workflow completes; its lineage size on disk; ``exoflow status``
latency from a second process, with the store closed and while the workflow is live.

The workflow (``checkpoint="sync"``: every task durable): N ``leaf`` tasks in groups of
``--group`` (100), each group summed by one ``total`` task, the group sums by a last
``total`` — N + N/100 + 1 tasks (101,001 for N = 100,000), so no task has more than a few
hundred arguments. This process is the "notebook": it owns the store and runs the workflow
with ``exo.run_async``.

``exoflow status`` is measured two ways, each from another process, each time the command a
user types (``exoflow --store S status ID --json``):

* **command**: a fresh ``exoflow`` process, wall time from spawn to exit: interpreter start,
  imports, opening the store (or, while the workflow is live, asking its owner over the
  owner's socket), the query, the output. What a user waits for.
* **query**: one helper process that imports the CLI once (its import time is recorded
  apart), then runs ``cli.main([... "status", ...])`` several times, timing each: the
  store/socket work alone.

First **live**: once the workflow runs, ``--probes`` command samples and ``--probes`` query
samples (a sample counts only if it printed ``RUNNING``); then, after the result and
``exo.close()`` (the store has no owner), **closed**: the same again. Lineage size: after
close, ``lineage.duckdb`` (+ its WAL), the blob folder, the whole store.

Targets from the issue: lineage <= 100 MB (we hold the whole store to it); ``exoflow status``
<= 200 ms (the command, closed and live; the query figures show where the time goes).

    python bench/scale.py                   # N = 100,000
    python bench/scale.py --tasks 10000     # or --quick: N = 10,000, 3 probes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import add_load_flags, aligned, publish, ray_up, start, target, verdict

WORKFLOW = "scale-bench"
LINEAGE_TARGET_MB = 100.0
STATUS_TARGET_MS = 200.0

# The query probe: imports the CLI once, then times `exoflow status` in-process.
QUERY_PROBE = r"""
import contextlib, io, json, sys, time
t0 = time.perf_counter()
from exoflow_kernel import cli
import_s = time.perf_counter() - t0
store, wf, k, gap = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
samples = []
for _ in range(k):
    buf = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["--store", store, "status", wf, "--json"])
    took = time.perf_counter() - started
    try:
        status = json.loads(buf.getvalue())["status"]
    except ValueError:
        status = f"rc {rc}"
    samples.append([took, status])
    time.sleep(gap)
print(json.dumps({"import_s": import_s, "samples": samples}))
"""


def build(n: int, group: int):
    import exoflow_kernel as exo
    from workloads import leaf, total
    t_leaf, t_total = (exo.task(f, checkpoint="sync") for f in (leaf, total))
    sums = [t_total.bind(*[t_leaf.bind(i) for i in range(lo, min(n, lo + group))]) for lo in range(0, n, group)]
    return t_total.bind(*sums)


def command() -> list[str]:
    exe = shutil.which("exoflow")
    return [exe] if exe else [sys.executable, "-c", "import sys; from exoflow_kernel.cli import main; sys.exit(main())"]


def command_probe(store: Path, gap: float) -> tuple[float, str]:
    """One ``exoflow status`` process, wall time spawn -> exit; the status it printed."""
    started = time.perf_counter()
    done = subprocess.run([*command(), "--store", str(store), "status", WORKFLOW, "--json"], capture_output=True,
                          text=True, timeout=300)
    took = time.perf_counter() - started
    try:
        status = json.loads(done.stdout)["status"]
    except ValueError:
        status = f"rc {done.returncode}: {done.stderr.strip()[-200:]}"
    time.sleep(gap)
    return took, status


def query_probe(store: Path, k: int, gap: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", QUERY_PROBE, str(store), WORKFLOW, str(k), str(gap)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Probe:
    """Samples of one way of asking, in one situation."""

    situation: str            # "closed" | "live"
    how: str                  # "command" | "query"
    samples_ms: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    import_ms: float | None = None  # query probe: importing the CLI, once
    median_ms: float | None = None
    max_ms: float | None = None
    passed: bool | None = None

    def add(self, seconds: float, status: str, want: str) -> None:
        self.statuses.append(status)
        if status == want:
            self.samples_ms.append(seconds * 1e3)

    def close(self) -> "Probe":
        if self.samples_ms:
            self.median_ms, self.max_ms = statistics.median(self.samples_ms), max(self.samples_ms)
            if self.how == "command":
                self.passed = self.median_ms <= STATUS_TARGET_MS
        return self


@dataclass
class Result:
    n_leaves: int
    tasks: int = 0
    value_ok: bool = False
    status: str = ""
    run_s: float = 0.0
    us_per_task: float = 0.0
    lineage_bytes: int = 0      # lineage.duckdb + WAL
    blob_bytes: int = 0         # the blob folder (started.log, any file blobs)
    store_bytes: int = 0
    lineage_passed: bool | None = None
    probes: list[Probe] = field(default_factory=list)


def measure_probes(store: Path, situation: str, want: str, k: int, gap: float, still: callable) -> list[Probe]:
    """``k`` command samples, then ``k`` query samples (one helper process)."""
    cmd, query = Probe(situation, "command"), Probe(situation, "query")
    for _ in range(k):
        if not still():
            break
        cmd.add(*command_probe(store, gap), want)
    helper = query_probe(store, k, gap)
    out, err = helper.communicate(timeout=600)
    if helper.returncode != 0:
        raise RuntimeError(f"query probe failed ({helper.returncode}):\n{err[-2000:]}")
    got = json.loads(out.strip().splitlines()[-1])
    query.import_ms = got["import_s"] * 1e3
    for took, status in got["samples"]:
        query.add(took, status, want)
    return [cmd.close(), query.close()]


def run(n: int, group: int, k: int, gap: float, tmp: Path) -> Result:
    import ray

    import exoflow_kernel as exo
    from workloads import expected

    res = Result(n)
    store = tmp / "store"
    ray_up()  # the engine would start the same local Ray; this one retries a start-up time-out
    exo.init(store)
    node = build(n, group)
    started = time.perf_counter()
    future = exo.run_async(node, workflow_id=WORKFLOW)
    while exo.status(WORKFLOW) != "RUNNING" and not future.done():
        time.sleep(0.05)
    time.sleep(min(2.0, n / 20000))  # let the coordinator get going: a realistic live store
    print("  live: probing", flush=True)
    res.probes += measure_probes(store, "live", "RUNNING", k, gap, lambda: not future.done())
    value = future.result()
    res.run_s = time.perf_counter() - started
    res.value_ok = value == expected("fanout", n)
    res.status = exo.status(WORKFLOW)
    res.tasks = len(exo.lineage(WORKFLOW))
    res.us_per_task = res.run_s / res.tasks * 1e6
    print(f"  done: {res.tasks} tasks in {res.run_s:.1f} s ({res.status}, value {'ok' if res.value_ok else 'WRONG'})",
          flush=True)
    exo.close()
    ray.shutdown()
    res.lineage_bytes = sum(du(p) for p in store.glob("lineage.duckdb*"))
    res.blob_bytes = du(store / "blobs") if (store / "blobs").exists() else 0
    res.store_bytes = du(store)
    res.lineage_passed = res.store_bytes <= LINEAGE_TARGET_MB * 2**20
    print("  closed: probing", flush=True)
    res.probes += measure_probes(store, "closed", "SUCCESSFUL", k, gap, lambda: True)
    return res


def targets(res: Result) -> list[dict]:
    where = f"scale {res.tasks} tasks"
    out = [target("scale.completes", where, "completes with the right value", res.status or "-", "SUCCESSFUL",
                  res.value_ok and res.status == "SUCCESSFUL"),
           target("scale.lineage", where, "store on disk (lineage + blobs)", f"{res.store_bytes / 2**20:.1f} MB",
                  f"<= {LINEAGE_TARGET_MB:g} MB", res.lineage_passed)]
    for p in res.probes:
        if p.how == "command":
            out.append(target(f"scale.status.{p.situation}", where, f"`exoflow status` from a 2nd process, {p.situation}",
                              "no sample" if p.median_ms is None else f"{p.median_ms:.0f} ms",
                              f"<= {STATUS_TARGET_MS:g} ms", p.passed))
    return out


def table(res: Result) -> str:
    mb = 2**20
    head = ("what", "figure", "target", "result")
    body = [("workflow", f"{res.tasks} tasks ({res.n_leaves} leaves), {res.status}, value "
                         f"{'ok' if res.value_ok else 'WRONG'}", "completes", verdict(res.value_ok and res.status == "SUCCESSFUL")),
            ("run time", f"{res.run_s:.1f} s ({res.us_per_task:.0f} µs/task)", "-", "-"),
            ("lineage.duckdb (+WAL)", f"{res.lineage_bytes / mb:.1f} MB ({res.lineage_bytes / max(res.tasks, 1):.0f} B/task)", "-", "-"),
            ("blob folder", f"{res.blob_bytes / mb:.1f} MB", "-", "-"),
            ("store on disk", f"{res.store_bytes / mb:.1f} MB", f"<= {LINEAGE_TARGET_MB:g} MB", verdict(res.lineage_passed))]
    for p in res.probes:
        what = f"status {p.how}, {p.situation}"
        if p.median_ms is None:
            body.append((what, f"no sample ({', '.join(p.statuses) or 'not run'})", "-", "-"))
            continue
        extra = f"; CLI import {p.import_ms:.0f} ms" if p.import_ms is not None else ""
        body.append((what, f"{p.median_ms:.0f} ms median, {p.max_ms:.0f} max of {len(p.samples_ms)}{extra}",
                     f"<= {STATUS_TARGET_MS:g} ms" if p.how == "command" else "-", verdict(p.passed)))
    return aligned(head, body, left=2)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=100_000, help="leaf tasks (default %(default)s)")
    p.add_argument("--group", type=int, default=100, help="leaves per group sum (default %(default)s)")
    p.add_argument("--probes", type=int, default=5, help="status samples per way and situation (default 5)")
    p.add_argument("--gap", type=float, default=0.2, help="pause between status samples, s (default 0.2)")
    p.add_argument("--quick", action="store_true", help="smoke run: 10,000 leaves, 3 probes")
    add_load_flags(p)
    args = p.parse_args()
    if args.quick:
        args.tasks, args.probes = 10_000, 3
    return args


def main() -> None:
    args = parse_args()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    meta = start(args)
    print(f"scale: {args.tasks} leaves in groups of {args.group}, {args.probes} status probes each", flush=True)
    with tempfile.TemporaryDirectory(prefix="exoflow-bench-scale-") as tmp:
        res = run(args.tasks, args.group, args.probes, args.gap, Path(tmp))
    import ray
    meta.update(tasks=args.tasks, group=args.group, probes=args.probes, gap_s=args.gap, ray=ray.__version__,
                command=" ".join(command()))
    publish("scale.json", table(res), meta, [asdict(res)], targets(res))


if __name__ == "__main__":
    main()
