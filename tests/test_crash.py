"""kill -9 of a real driver at each step of the commit protocol, then resume in a
fresh process; exactly-once is checked by real counts (executions, rows,
applied charges), never by our own status table."""

from __future__ import annotations

import pytest

from support.payments import PaymentService
from support.trials import Trial, check_exactly_once, crash, lineage_states, resume_and_check


@pytest.fixture(scope="module")
def payments():
    service = PaymentService()
    yield service
    service.close()


# Crash points whose driver starts its own Ray, so kill -9 takes that Ray down too and the
# resume must clean up what it left; the others join the session's Ray (much faster).
OWN_RAY = {"in-commit:save", "committed:charge"}


def test_failure_free_run(tmp_path, payments, ray_address):
    trial = Trial(tmp_path, payments, "clean", ray_address)
    result = trial.finish(trial.start("run"))
    check_exactly_once(trial, result, set(), {})
    assert all(n == 1 for n in trial.counts().values())


@pytest.mark.parametrize("crash_at", [
    "dispatch:save",        # before the effect task is dispatched
    "finished:save",        # task finished, result not committed
    "in-commit:save",       # inside the grouped transaction, before COMMIT
    "committed:save",       # right after the commit
    "finished:pick",        # nondeterministic value made, not yet durable
    "finished:squares",     # async checkpoint pending
    "committed:countdown",  # continuation committed, sub-workflow not run
    "dispatch:charge",      # intent durable, call not made
    "committed:charge",     # idempotent call committed
])
def test_crash_point_then_resume(tmp_path, payments, ray_address, crash_at):
    address = None if crash_at in OWN_RAY else ray_address
    trial = Trial(tmp_path, payments, "wf-" + crash_at.replace(":", "-"), address)
    crash(trial, crash_at=crash_at)
    resume_and_check(trial)


def test_crash_while_a_task_runs(tmp_path, payments):
    trial = Trial(tmp_path, payments, "wf-running")
    crash(trial, pause_at="save")
    resume_and_check(trial)
    assert trial.counts()["save"] == 2
    assert lineage_states(trial)["save"] == "re-executed"


def test_crash_after_idempotent_call_is_reported_ambiguous(tmp_path, payments, ray_address):
    trial = Trial(tmp_path, payments, "wf-ambiguous", ray_address)
    crash(trial, pause_at="charge")
    resume_and_check(trial)
    key = "exo:wf-ambiguous:charge"
    assert len([k for k, _ in payments.requests if k == key]) == 2  # called twice, applied once
    assert lineage_states(trial)["charge"] == "ambiguous"
