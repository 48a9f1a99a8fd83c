"""Crash trials on the reference workflow (support/crash_workflow.py), shared by
tests/test_crash.py, tests/test_concurrency.py, tests/test_storage_faults.py and the
soak command (tests/soak.py).

A :class:`Trial` is one workflow in its own store, driven by subprocesses we can
``kill -9``; :func:`check_exactly_once` proves exactly-once by real counts
(executions, rows, applied charges), never by our own status table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psutil

from support.payments import PaymentService

SCRIPT = Path(__file__).resolve().parent / "crash_workflow.py"
ROOT = Path(__file__).resolve().parent.parent.parent
EXPECTED = {"total": sum(x * x for x in range(30)), "saved": 30, "countdown": 2}


class Trial:
    """One workflow in its own store, driven by subprocesses we can kill."""

    def __init__(self, tmp_path: Path, payments: PaymentService, workflow_id: str,
                 ray_address: str | None = None) -> None:
        """``ray_address``: drivers join that Ray (fast); without it each starts its own, and
        kill -9 takes that Ray down with the driver (the leftovers check then means something)."""
        self.store = tmp_path / "store"
        self.ray_address = ray_address
        self.counters = tmp_path / "counters"
        self.counters.mkdir()
        self.payments = payments
        self.workflow_id = workflow_id

    def env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("EXOFLOW_CRASH_AT", "PAUSE_AT", "EXOFLOW_RAY_ADDRESS")}
        if self.ray_address:
            env["EXOFLOW_RAY_ADDRESS"] = self.ray_address
        return {**env, "EXOFLOW_STORE": str(self.store), "COUNTERS": str(self.counters),
                "PAYMENTS": self.payments.url, "PYTHONPATH": str(ROOT), **extra}

    def start(self, verb: str, **extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(SCRIPT), verb, self.workflow_id], env=self.env(**extra),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, proc: subprocess.Popen) -> dict:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"driver failed ({proc.returncode}):\n{err[-3000:]}"
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
        return json.loads(line[len("RESULT "):])

    def counts(self) -> dict[str, int]:
        return {f.name: len(f.read_text().splitlines()) for f in self.counters.iterdir()
                if not f.name.endswith(".reached")}

    def db(self) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(self.store / "lineage.duckdb"), read_only=True)

    def committed(self) -> set[str]:
        """Tasks whose commit is durable (checkpoint=False tasks may re-run: contract 5)."""
        with self.db() as con:
            rows = con.execute("select distinct task_id from exoflow.task_log where workflow_id = ? "
                               "and state in ('committed', 'continued')", [self.workflow_id]).fetchall()
        return {r[0] for r in rows}

    def leftovers(self) -> list[tuple[int, float]]:
        owner = json.loads((self.store / "owner.json").read_text())
        return [tuple(x) for x in owner["leftovers"]]


def crash(trial: Trial, crash_at: str | None = None, pause_at: str | None = None) -> None:
    """Run the driver until it dies by SIGKILL: at an engine crash point, or paused in a task."""
    extra = {"EXOFLOW_CRASH_AT": crash_at} if crash_at else {"PAUSE_AT": pause_at}
    proc = trial.start("run", **extra)
    if pause_at:
        marker = trial.counters / f"{pause_at}.reached"
        deadline = time.time() + 180
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"driver never reached {pause_at}: {proc.communicate()[1][-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"driver was not killed (exit {proc.returncode})"


def check_exactly_once(trial: Trial, result: dict, committed_before: set[str], counts_before: dict) -> None:
    counts_after = trial.counts()
    for task in committed_before:
        name = {"load": "load0", "load.1": "load1", "load.2": "load2"}.get(task, task)
        if name in counts_before:
            assert counts_after[name] == counts_before[name], f"committed task {task} ran again"
    for task, n in counts_after.items():
        assert n <= 2, f"task {task} ran {n} times across one crash"
    assert {k: result[k] for k in EXPECTED} == EXPECTED
    with trial.db() as con:
        rows = con.execute("select count(*), count(distinct id), min(pick), max(pick) from main.sales").fetchall()
        keys = con.execute("select idempotency_key from exoflow.effects where workflow_id = ? and kind = "
                           "'idempotent' and phase = 'commit'", [trial.workflow_id]).fetchall()
    assert rows == [(30, 30, result["pick"], result["pick"])], "transactional rows not exactly once"
    key = f"exo:{trial.workflow_id}:charge"
    assert keys == [(key,)]
    assert trial.payments.applied[key]["charge_id"] == result["receipt"]
    assert key not in trial.payments.conflicts, "the same key was sent with two different amounts"
    amounts = {a for k, a in trial.payments.requests if k == key}
    assert amounts == {result["pick"] % 1000 + 30}


def resume_and_check(trial: Trial) -> dict:
    committed_before, counts_before, leftovers = trial.committed(), trial.counts(), trial.leftovers()
    result = trial.finish(trial.start("resume"))
    check_exactly_once(trial, result, committed_before, counts_before)
    alive = [pid for pid, created in leftovers if _alive(pid, created)]
    assert not alive, f"Ray processes of the dead driver still running: {alive}"
    return result


def _alive(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - created) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def lineage_states(trial: Trial) -> dict[str, str]:
    code = f"import exoflow_kernel as exo, json; print(json.dumps({{r.task_id: r.state for r in exo.lineage({trial.workflow_id!r})}}))"
    out = subprocess.run([sys.executable, "-c", code], env=trial.env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])
