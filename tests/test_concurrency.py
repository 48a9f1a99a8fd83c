"""Several processes at one store: two resumes racing after a crash, a lease left by a
``kill -9``'d owner, and the CLI reading again and again while another process commits
a thousand tasks. Exactly-once is checked by real counts (support/trials.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from exoflow_kernel.render import LEGEND
from support.payments import PaymentService
from support.trials import ROOT, Trial, check_exactly_once, crash, resume_and_check, _alive

RACE_DRIVER = Path(__file__).parent / "support" / "race_driver.py"


@pytest.fixture(scope="module")
def payments():
    service = PaymentService()
    yield service
    service.close()


def cli(store: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EXOFLOW_STORE"}
    return subprocess.run([sys.executable, "-m", "exoflow_kernel.cli", "--store", str(store), *args],
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=180)


def test_two_resumes_at_once_run_the_workflow_once(tmp_path, payments, ray_address):
    trial = Trial(tmp_path, payments, "race", ray_address)
    crash(trial, crash_at="dispatch:save")
    committed_before, counts_before, leftovers = trial.committed(), trial.counts(), trial.leftovers()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = trial.env(BARRIER=str(barrier), PARTIES="2")
    racers = [subprocess.Popen([sys.executable, str(RACE_DRIVER), trial.workflow_id], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in racers]
    codes = sorted(p.returncode for p in racers)
    assert codes == [0, 3], f"want one winner and one clean refusal, got {codes}: {[e[-2000:] for _, e in outs]}"
    (win_out, _), (lose_out, lose_err) = sorted(outs, key=lambda o: "RESULT " not in o[0])
    refusal = lose_out.strip().splitlines()[-1]
    # Either it saw the winner's owner.json (a live owner) or the winner had not written it yet.
    assert refusal.startswith(("REFUSED WorkflowLiveError: Workflow 'race' is owned by a live process",
                               "REFUSED StoreError: Cannot use the ExoFlow store at")), refusal
    assert "Traceback" not in lose_err

    result = json.loads([ln for ln in win_out.splitlines() if ln.startswith("RESULT ")][-1][7:])
    check_exactly_once(trial, result, committed_before, counts_before)
    assert all(n == 1 for n in trial.counts().values()), trial.counts()  # every task ran once in all
    assert not [pid for pid, created in leftovers if _alive(pid, created)]
    assert cli(trial.store, "status", "race", "--json").returncode == 0
    assert json.loads(cli(trial.store, "status", "race", "--json").stdout)["status"] == "SUCCESSFUL"


def test_lease_of_a_killed_owner_is_taken_over(tmp_path, payments):
    trial = Trial(tmp_path, payments, "dead-owner")
    crash(trial, pause_at="save")  # kill -9 while a task runs: its Ray worker outlives the driver
    owner = json.loads((trial.store / "owner.json").read_text())
    leftovers = trial.leftovers()
    assert [pid for pid, created in leftovers if _alive(pid, created)], "no Ray leftovers to clean up?"
    with trial.db() as con:
        lease = con.execute("select pid, run from exoflow.leases where workflow_id = ?",
                            [trial.workflow_id]).fetchall()
    assert lease == [(owner["pid"], 1)]  # the dead driver still holds the lease
    # (No CLI call here: any process that opens the store, even `exoflow status`, takes the
    # dead owner's place and cleans up its leftovers; we want resume to be that process.)

    resume_and_check(trial)  # takes the lease over and kills the dead owner's Ray processes

    with trial.db() as con:
        assert con.execute("select count(*) from exoflow.leases").fetchall() == [(0,)]
        owners = con.execute("select run, owner from exoflow.runs where workflow_id = ? order by run",
                             [trial.workflow_id]).fetchall()
    assert [r for r, _ in owners] == [1, 2]
    assert f"pid {owner['pid']} " in owners[0][1] and f"pid {owner['pid']} " not in owners[1][1]
    assert not (trial.store / "owner.json").exists()  # the successor exited and let go
    status = cli(trial.store, "status", "dead-owner", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "SUCCESSFUL", status.stderr


BIG_DRIVER = """
import json, time
import exoflow_kernel as exo

exo.init()
N = {n}

@exo.task(effect="transactional", num_cpus=0.25)
def work(i):
    exo.context().write("hits", [{{"i": i}}])
    return i

@exo.task
def total(xs, go):
    return sum(xs)

future = exo.run_async(total.bind([work.bind(i) for i in range(N)], exo.wait_for_event("finish")),
                       workflow_id="big")
print("started", flush=True)
result = future.result()
rows = exo.sql("select count(*), count(distinct i), sum(i) from hits")[0]
print(json.dumps({{"result": result, "rows": list(rows)}}), flush=True)
"""
N_WORK = 999


def test_cli_polled_while_a_thousand_tasks_commit_never_breaks_the_writer(tmp_path):
    store = tmp_path / "store"
    out, err = tmp_path / "driver.out", tmp_path / "driver.err"
    env = {**{k: v for k, v in os.environ.items() if k != "EXOFLOW_STORE"}, "EXOFLOW_STORE": str(store),
           "PYTHONPATH": str(ROOT)}
    with out.open("w") as fout, err.open("w") as ferr:
        driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(BIG_DRIVER.format(n=N_WORK))],
                                  stdout=fout, stderr=ferr, env=env)
    try:
        deadline = time.monotonic() + 240
        while "started" not in out.read_text():
            assert driver.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "driver did not start"
            time.sleep(0.2)

        polls, committed_seen, sent = [], 0, False
        while True:
            running = driver.poll() is None
            status = cli(store, "status", "big", "--json")
            assert status.returncode == 0, status.stderr
            info = json.loads(status.stdout)
            lineage = cli(store, "lineage", "big", "--json")
            assert lineage.returncode == 0, lineage.stderr
            records = json.loads(lineage.stdout)
            assert info["tasks"] == len(records) == N_WORK + 2  # the works, the event, total
            assert {r["state"] for r in records} <= set(LEGEND)
            assert sum(info["states"].values()) == info["tasks"]
            committed = sum(r["state"] == "committed" for r in records)
            assert committed >= committed_seen, "a committed task went back"
            committed_seen = committed
            polls.append((info["status"], committed))
            if not sent:
                # Until we send the event the workflow cannot finish, whatever the timing.
                assert info["status"] == "RUNNING", info
                assert records[-1]["task_id"] == "total" and records[-1]["state"] in ("pending", "running")
            if not running:
                break
            if not sent and (committed >= N_WORK or len(polls) >= 6):
                send = subprocess.run([sys.executable, "-c", "import exoflow_kernel as exo; exo.init(); "
                                       "print(exo.send_event('big', 'finish', True))"],
                                      env=env, capture_output=True, text=True, timeout=120)
                assert send.returncode == 0 and send.stdout.strip() == "True", send.stderr
                sent = True
        assert driver.wait(timeout=300) == 0, err.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    final = json.loads(out.read_text().splitlines()[-1])
    assert final == {"result": sum(range(N_WORK)), "rows": [N_WORK, N_WORK, sum(range(N_WORK))]}
    assert polls[-1] == ("SUCCESSFUL", N_WORK + 2)  # the last poll came after the driver exited
    assert any(status == "RUNNING" for status, _ in polls)


CANCEL_RACE = """
import time
import exoflow_kernel as exo

exo.init()

@exo.task(max_retries=0)
def part(i):
    if i == 0:
        raise ValueError("boom")
    time.sleep(0.001 * (i % 7))
    return i

@exo.task
def total(*xs):
    return sum(xs)

for k in range({rounds}):
    try:
        exo.run(total.bind(*[part.bind(i) for i in range(60)]), workflow_id=f"w{{k}}")
    except exo.WorkflowFailedError:
        pass
print("survived", flush=True)
"""


def test_a_failing_task_among_running_ones_never_aborts_the_driver(tmp_path):
    """A task failure must fail the workflow, not kill the process (a notebook kernel)."""
    env = {**{k: v for k, v in os.environ.items() if k != "EXOFLOW_STORE"},
           "EXOFLOW_STORE": str(tmp_path / "store"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CANCEL_RACE.format(rounds=40))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "survived" in proc.stdout, proc.stderr[-2000:]
