"""The reference workflow for crash tests, run as a driver in its own process.

    python crash_workflow.py run|resume WORKFLOW_ID

Environment: EXOFLOW_STORE, COUNTERS (a folder: each task appends a line to
its own file every time it really runs), PAYMENTS (URL of the payment
service), PAUSE_AT (a task that, once it reached its crash-prone step, writes
``<name>.reached`` and sleeps so the test can ``kill -9`` the driver there),
EXOFLOW_CRASH_AT (an engine crash point, see exoflow_kernel/faults.py).
It has a fan-out, a nondeterministic task, an async checkpoint, a
checkpoint=False task, a transactional effect, an idempotent effect against
the payment service, and a continuation.
"""

import json
import os
import random
import sys
import time
import urllib.request

import exoflow_kernel as exo


def tick(name):
    with open(os.path.join(os.environ["COUNTERS"], name), "a") as f:
        f.write(f"{os.getpid()}\n")


def pause_if_asked(name):
    if os.environ.get("PAUSE_AT") == name:
        open(os.path.join(os.environ["COUNTERS"], f"{name}.reached"), "w").close()
        time.sleep(120)


@exo.task
def load(i):
    tick(f"load{i}")
    return list(range(i * 10, i * 10 + 10))


@exo.task(deterministic=False)
def pick():
    tick("pick")
    return random.randint(1, 10**6)


@exo.task(checkpoint="async")
def squares(parts):
    tick("squares")
    return [x * x for part in parts for x in part]


@exo.task(checkpoint=False)
def total(xs):
    tick("total")
    return sum(xs)


@exo.task(effect="transactional")
def save(parts, p):
    tick("save")
    pause_if_asked("save")
    exo.context().write("sales", [{"id": x, "pick": p} for part in parts for x in part])
    return sum(len(part) for part in parts)


@exo.task(effect="idempotent")
def charge(n_rows, p):
    tick("charge")
    body = json.dumps({"amount": p % 1000 + n_rows}).encode()
    req = urllib.request.Request(os.environ["PAYMENTS"] + "/charge", data=body, headers={
        "Idempotency-Key": exo.context().idempotency_key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as reply:
        receipt = json.load(reply)
    pause_if_asked("charge")
    return receipt["charge_id"]


@exo.task
def add1(x):
    return x + 1


@exo.task
def countdown(n):
    tick(f"countdown{n}")
    if n == 0:
        return 0
    return exo.continuation(add1.bind(countdown.bind(n - 1)))


@exo.task
def summary(tot, saved, receipt, cd, p):
    tick("summary")
    return {"total": tot, "saved": saved, "receipt": receipt, "countdown": cd, "pick": p}


def build():
    parts = [load.bind(i) for i in range(3)]
    p = pick.bind()
    saved = save.bind(parts, p)
    return summary.bind(total.bind(squares.bind(parts)), saved, charge.bind(saved, p), countdown.bind(2), p)


def join_shared_ray() -> None:
    """With $EXOFLOW_RAY_ADDRESS, join that Ray ourselves: its workers do not inherit our
    environment, so the variables the tasks read travel in this job's runtime_env."""
    address = os.environ.get("EXOFLOW_RAY_ADDRESS")
    if address:
        import ray

        names = ("COUNTERS", "PAYMENTS", "PAUSE_AT", "PYTHONPATH")
        ray.init(address=address, runtime_env={"env_vars": {k: os.environ[k] for k in names if k in os.environ}})


if __name__ == "__main__":
    verb, workflow_id = sys.argv[1], sys.argv[2]
    join_shared_ray()
    result = exo.run(build(), workflow_id=workflow_id) if verb == "run" else exo.resume(workflow_id)
    print("RESULT " + json.dumps(result))
