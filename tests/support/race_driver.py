"""Resume a workflow at the same instant as other processes, for race tests.

    python race_driver.py WORKFLOW_ID

Environment: EXOFLOW_STORE, BARRIER (a folder), PARTIES (how many processes
race). Each process imports the engine, writes ``BARRIER/ready.<pid>``, waits
until PARTIES such files exist, then calls ``exo.resume``: so all of them try
to own the store within milliseconds of each other, whatever the machine's load.
Prints ``RESULT <json>`` and exits 0, or prints ``REFUSED <Error>: <message>``
and exits 3 when the engine refuses with an ExoflowError; anything else is a
crash (exit 1, traceback).
"""

import json
import os
import sys
import time
from pathlib import Path

import exoflow_kernel as exo
from crash_workflow import join_shared_ray

REFUSED = 3

if __name__ == "__main__":
    join_shared_ray()  # before the barrier: the race is for the store, not for Ray
    barrier = Path(os.environ["BARRIER"])
    (barrier / f"ready.{os.getpid()}").touch()
    deadline = time.time() + 120
    while len(list(barrier.glob("ready.*"))) < int(os.environ["PARTIES"]):
        if time.time() > deadline:
            sys.exit("the other racers never came")
        time.sleep(0.005)
    try:
        result = exo.resume(sys.argv[1])
    except exo.ExoflowError as exc:
        print(f"REFUSED {type(exc).__name__}: {exc}", flush=True)
        sys.exit(REFUSED)
    print("RESULT " + json.dumps(result), flush=True)
