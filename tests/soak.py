"""Soak: random crash trials on the reference workflow, again and again.

    python tests/soak.py --minutes 30        # or: --trials 200   (also: --seed S, --keep DIR)
    bash scripts/soak.sh --minutes 30

Not a test module (pytest collects ``test_*.py`` only), so the default test
command never runs it. Each trial uses a fresh store and one of:

* an engine crash point, ``EXOFLOW_CRASH_AT=<point>:<task>``, drawn from every
  point in exoflow_kernel/faults.py times every task of the reference workflow
  (tests/support/crash_workflow.py), continuation sub-tasks included;
* a ``kill -9`` of the driver at a random moment: any time after it started (Ray
  start-up included), or 0-3 s after its first task started.

Then it resumes in a fresh process (or runs again, if the kill came before the
workflow was even recorded) and checks the same exactly-once counts as
tests/test_crash.py, with the same function (support/trials.py): committed tasks
not re-run, rows once, one charge per key, the result of a failure-free run, and
the dead driver's Ray processes gone. One line per trial, then
``soak: T trials, F failures``; the exit code is 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.payments import PaymentService  # noqa: E402
from support.trials import Trial, _alive, check_exactly_once, resume_and_check  # noqa: E402

POINTS = ("dispatch", "finished", "in-commit", "committed")  # exoflow_kernel/faults.py
TASKS = ("load", "load.1", "load.2", "pick", "squares", "total", "save", "charge", "countdown",
         "countdown/countdown", "countdown/countdown/countdown", "countdown/add1", "summary")
RANDOM_KILL_SHARE = 0.25
KILL_WINDOW = (0.5, 14.0)  # seconds after the driver starts (Ray alone takes ~5 s)


def crash_run(trial: Trial, rng: random.Random) -> str:
    """Run the driver until it dies; say how. A crash point the run never reaches, or a
    kill after the end, lets the driver finish: that trial checks a plain resume."""
    if rng.random() < RANDOM_KILL_SHARE:
        proc = trial.start("run")
        if rng.random() < 0.5:  # any moment, Ray's start-up included
            delay = rng.uniform(*KILL_WINDOW)
            how = f"kill -9 {delay:4.1f}s after start"
        else:  # a moment while tasks run: after the first one started
            first = trial.store / "blobs" / trial.workflow_id / "started.log"
            while not first.exists() and proc.poll() is None:
                time.sleep(0.02)
            delay = rng.uniform(0.0, 3.0)
            how = f"kill -9 {delay:4.1f}s after the first task"
        try:
            proc.wait(timeout=delay)
        except Exception:
            os.kill(proc.pid, signal.SIGKILL)
    else:
        point = f"{rng.choice(POINTS)}:{rng.choice(TASKS)}"
        proc = trial.start("run", EXOFLOW_CRASH_AT=point)
        how = f"crash at {point}"
    _, err = proc.communicate(timeout=300)
    if proc.returncode == -signal.SIGKILL:
        return how + " -> killed"
    if proc.returncode == 0:
        return how + " -> finished first"
    raise AssertionError(f"driver failed on its own ({proc.returncode}):\n{err[-3000:]}")


def recover_and_check(trial: Trial) -> str:
    """Resume and check exactly-once; a kill before the workflow existed means run it afresh."""
    if not _workflow_recorded(trial):
        counts_before = trial.counts()
        result = trial.finish(trial.start("run"))
        check_exactly_once(trial, result, set(), counts_before)
        return "ran afresh"
    if (trial.store / "owner.json").exists():
        resume_and_check(trial)
        return "resumed"
    # The owner let go (it finished, or was killed before it wrote owner.json): nothing to clean.
    committed_before, counts_before = trial.committed(), trial.counts()
    check_exactly_once(trial, trial.finish(trial.start("resume")), committed_before, counts_before)
    return "resumed"


def _workflow_recorded(trial: Trial) -> bool:
    if not (trial.store / "lineage.duckdb").exists():
        return False
    try:
        with trial.db() as con:
            return bool(con.execute("select 1 from exoflow.workflows where workflow_id = ?",
                                    [trial.workflow_id]).fetchall())
    except Exception:  # no schema yet: killed while the store was being created
        return False


def stray_processes(store: Path) -> int:
    """Kill processes a killed driver started but never recorded (killed before it could);
    they carry the trial's EXOFLOW_STORE in their environment. Return how many."""
    killed = 0
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and proc.environ().get("EXOFLOW_STORE") == str(store):
                proc.kill()
                killed += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return killed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--minutes", type=float, help="keep starting trials for this long")
    limit.add_argument("--trials", type=int, help="run this many trials")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed, to replay a soak)")
    parser.add_argument("--keep", type=Path, default=None, help="keep every trial's store here (default: "
                        "only failed ones, in a temp folder)")
    args = parser.parse_args(argv)
    if args.minutes is None and args.trials is None:
        args.trials = 10
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="exoflow-soak-"))
    deadline = time.monotonic() + args.minutes * 60 if args.minutes is not None else None
    print(f"soak: seed {seed}, work in {base}", flush=True)

    payments = PaymentService()
    trials = failures = 0
    try:
        while (deadline is None or time.monotonic() < deadline) and (args.trials is None or trials < args.trials):
            trials += 1
            folder = (args.keep or base) / f"trial-{trials:04d}"
            folder.mkdir(parents=True)
            trial = Trial(folder, payments, f"soak-{seed}-{trials}")
            started = time.monotonic()
            how, ok, detail = "?", True, ""
            try:
                how = crash_run(trial, rng)
                detail = recover_and_check(trial)
            except BaseException as exc:  # noqa: BLE001 - a trial's failure is reported, not raised
                if isinstance(exc, KeyboardInterrupt):
                    raise
                ok = False
                detail = f"FAILED: {type(exc).__name__}: {exc}"
                (folder / "failure.txt").write_text(traceback.format_exc())
            strays = stray_processes(trial.store)
            failures += not ok
            took = time.monotonic() - started
            extra = f", {strays} unrecorded Ray processes killed" if strays else ""
            print(f"trial {trials}: {how}; {detail.splitlines()[0] if detail else ''} "
                  f"({took:.0f}s{extra})" + ("" if ok else f" [kept: {folder}]"), flush=True)
            if ok and args.keep is None:
                shutil.rmtree(folder, ignore_errors=True)
    except KeyboardInterrupt:
        print("soak: interrupted", flush=True)
    finally:
        payments.close()
        if failures == 0 and args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"soak: {trials} trials, {failures} failures", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
