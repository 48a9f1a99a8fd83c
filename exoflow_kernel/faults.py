"""Crash points for fault-injection tests: a real ``kill -9`` at an exact step.

Set ``EXOFLOW_CRASH_AT=<point>:<task_id>`` (points: ``dispatch``, ``finished``,
``in-commit``, ``committed``) and the driver kills itself with SIGKILL when it
reaches that step for that task, exactly as a crashed kernel would die: no
``finally``, no flush, no atexit. Unset (always, outside tests), each point is
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from typing import Iterable

_TARGET = tuple(os.environ["EXOFLOW_CRASH_AT"].split(":", 1)) if ":" in os.environ.get("EXOFLOW_CRASH_AT", "") else None


def point(name: str, task_ids: Iterable[str] | str) -> None:
    """Die here if this is the crash point the environment names."""
    if _TARGET is None or _TARGET[0] != name:
        return
    ids = [task_ids] if isinstance(task_ids, str) else task_ids
    if _TARGET[1] in ids:
        os.kill(os.getpid(), signal.SIGKILL)
