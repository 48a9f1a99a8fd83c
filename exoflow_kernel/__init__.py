"""ExoFlow for notebooks: exactly-once workflows on Ray with a DuckDB lineage store.

    import exoflow_kernel as exo

    @exo.task
    def double(x):
        return 2 * x

    exo.run(double.bind(21), workflow_id="w1")   # -> 42, and durable
"""

from .api import (
    TaskRecord, cancel, close, context, continuation, delete, graph, init, lineage, list_workflows, output,
    resume, run, run_async, send_event, sql, status, stored_graph, task, wait_for_event,
)
from .errors import *  # noqa: F401,F403 - every error is part of the public surface
from .errors import ExoflowError

__version__ = "0.1.0"

__all__ = [
    "TaskRecord", "cancel", "close", "context", "continuation", "delete", "graph", "init", "lineage",
    "list_workflows", "output", "resume", "run", "run_async", "send_event", "sql", "status", "stored_graph", "task",
    "wait_for_event", "ExoflowError",
]
