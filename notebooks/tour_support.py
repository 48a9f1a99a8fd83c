"""Helpers of the recovery tour (notebooks/recovery_tour.ipynb): a seven-task workflow whose
driver is crashed at a chosen point, so that every state of the graph legend appears on purpose.

::

    first -> second ------------------------------.
    source -> prep (checkpoint=False) -> slow ----+-> report
    source -> charge (effect="idempotent") -------'

Everything the tasks need lives in one work folder ``WORK`` (an argument of every task, so a
resumed workflow finds it too): ``WORK/store`` is the lineage store, ``WORK/runs/<task>``
gets a line each time a task really runs, ``WORK/ledger.jsonl`` is a stand-in payment
service that applies a charge once per idempotency key, ``WORK/hold`` names tasks that wait
(until their process is killed) once they reach their crash point, and ``WORK/fail-report``
makes ``report`` fail while it exists.

The driver is ``python tour_support.py WORK``; :func:`crash` kills it with its whole process
tree (the local Ray it started) by SIGKILL, through ``demo/proctree.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import exoflow_kernel as exo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "demo"))
from proctree import all_dead, kill_tree  # noqa: E402  (shared with the demos)

WORKFLOW_ID = "tour"
TASKS = ("first", "second", "source", "prep", "slow", "charge", "report")


def _ran(work: str, name: str) -> None:
    with open(Path(work) / "runs" / name, "a") as f:
        f.write(f"{os.getpid()}\n")


def _hold(work: str, name: str) -> None:
    hold = Path(work) / "hold"
    if hold.exists() and name in hold.read_text().split():
        (Path(work) / "reached" / name).touch()
        time.sleep(600)  # until this process is killed


@exo.task
def first(work: str) -> int:
    _ran(work, "first")
    return 1


@exo.task
def second(work: str, x: int) -> int:
    _ran(work, "second")
    return x + 1


@exo.task
def source(work: str) -> list[int]:
    _ran(work, "source")
    return list(range(1, 6))


@exo.task(checkpoint=False)  # cheap: recomputed when (and only when) a task that needs it re-runs
def prep(work: str, xs: list[int]) -> list[int]:
    _ran(work, "prep")
    return [x * 10 for x in xs]


# The two tasks that wait at their crash point take no CPU slot: on a 2-core machine they would
# otherwise hold both, and `second` (still queued in Ray, shown as running) would never get to run.
@exo.task(num_cpus=0)
def slow(work: str, xs: list[int]) -> int:
    _ran(work, "slow")
    _hold(work, "slow")
    return sum(xs)


@exo.task(effect="idempotent", num_cpus=0)
def charge(work: str, xs: list[int]) -> str:
    """Charge once per idempotency key, as a payment API does; the key is the same on every attempt."""
    _ran(work, "charge")
    key = exo.context().idempotency_key
    ledger = Path(work) / "ledger.jsonl"
    seen = {json.loads(line)["key"] for line in ledger.read_text().splitlines()} if ledger.exists() else set()
    if key not in seen:
        with open(ledger, "a") as f:
            f.write(json.dumps({"key": key, "amount": len(xs) * 100}) + "\n")
    _hold(work, "charge")  # the charge is made, its task not committed: a crash now is ambiguous
    return key


@exo.task
def report(work: str, counted: int, total: int, receipt: str) -> dict:
    _ran(work, "report")
    if (Path(work) / "fail-report").exists():
        raise RuntimeError("the report printer is out of paper")
    return {"counted": counted, "total": total, "receipt": receipt}


def build(work: str | os.PathLike):
    """The tour's workflow (its node), on folder ``work``."""
    w = str(work)
    src = source.bind(w)
    return report.bind(w, second.bind(w, first.bind(w)), slow.bind(w, prep.bind(w, src)), charge.bind(w, src))


# -- the driver and its crash ---------------------------------------------------------------------


def setup(work: str | os.PathLike, hold: tuple[str, ...] = ()) -> Path:
    """Make the work folder; ``hold``: tasks that wait at their crash point."""
    work = Path(work)
    for sub in ("runs", "reached"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "hold").write_text(" ".join(hold))
    return work


def start_driver(work: str | os.PathLike) -> subprocess.Popen:
    """Run the workflow in a driver process of its own (output in WORK/driver.log)."""
    env = {k: v for k, v in os.environ.items() if k not in ("EXOFLOW_STORE", "EXOFLOW_RAY_ADDRESS")}
    with open(Path(work) / "driver.log", "w") as log:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(work)], env=env, cwd=str(HERE),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def lineage(work: str | os.PathLike) -> dict[str, str]:
    """Task states as ``exoflow lineage --json`` reports them from another process."""
    out = subprocess.run([sys.executable, "-m", "exoflow_kernel.cli", "--store", str(Path(work) / "store"),
                          "lineage", WORKFLOW_ID, "--json"], capture_output=True, text=True, timeout=120)
    states = {r["task_id"]: r["state"] for r in json.loads(out.stdout)} if out.returncode == 0 else {}
    answer = json.dumps(states) if out.returncode == 0 else f"exit {out.returncode}: {out.stderr.strip()[-600:]}"
    (Path(work) / "last-poll.txt").write_text(answer)  # the CLI's latest answer, for wait_for's error message
    return states


def wait_for(work: str | os.PathLike, proc: subprocess.Popen, wanted: dict[str, str], timeout: float = 200) -> dict:
    """Wait until the held tasks reached their point and the lineage shows ``wanted``."""
    work, deadline = Path(work), time.monotonic() + timeout
    held = (work / "hold").read_text().split()
    while True:
        if all((work / "reached" / t).exists() for t in held):
            states = lineage(work)
            if all(states.get(t) == s for t, s in wanted.items()):
                return states
        if proc.poll() is not None or time.monotonic() > deadline:
            log = (work / "driver.log").read_text()[-3000:]
            last = work / "last-poll.txt"
            polls = last.read_text() if last.exists() else "none yet"
            if proc.poll() is None:
                crash(proc)
            raise RuntimeError(f"the driver never reached {wanted} (exit {proc.returncode}); the CLI's last answer: "
                               f"{polls}; the driver's log:\n{log}")
        time.sleep(0.2)


def graph_svg(work: str | os.PathLike) -> str:
    """The recovery graph as ``exoflow graph`` draws it from another process (SVG text)."""
    path = Path(work) / "graph.svg"
    subprocess.run([sys.executable, "-m", "exoflow_kernel.cli", "--store", str(Path(work) / "store"), "graph",
                    WORKFLOW_ID, "-o", str(path)], check=True, capture_output=True, timeout=120)
    return path.read_text()


def crash(proc: subprocess.Popen) -> int:
    """kill -9 the driver and every process under it; return how many processes died."""
    killed = [int(n.split(":")[0]) for n in kill_tree(proc.pid)]
    proc.wait()
    assert all_dead(killed)
    return len(killed)


def runs(work: str | os.PathLike) -> dict[str, int]:
    """How many times each task really ran (lines in WORK/runs/<task>)."""
    folder = Path(work) / "runs"
    return {t: len((folder / t).read_text().splitlines()) if (folder / t).exists() else 0 for t in TASKS}


def charges(work: str | os.PathLike) -> list[dict]:
    """What the stand-in payment service applied."""
    ledger = Path(work) / "ledger.jsonl"
    return [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []


if __name__ == "__main__":
    work_dir = Path(sys.argv[1])
    exo.init(work_dir / "store")
    print(exo.run(build(work_dir), workflow_id=WORKFLOW_ID), flush=True)
