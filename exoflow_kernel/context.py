"""What a running task knows about itself: ``exo.context()``.

The context lives in the worker for the duration of one task. Rows given to
``ctx.write`` are not written by the worker: they travel with the task's result
to the coordinator, which inserts them in the same DuckDB transaction that
commits the task, so they land exactly once.
"""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import InvalidOptionError, NotInTaskError, WriteNotAllowedError

if TYPE_CHECKING:
    import pyarrow as pa

_current: contextvars.ContextVar["TaskContext | None"] = contextvars.ContextVar("exoflow_task", default=None)
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class TaskContext:
    """Identity of the running task, and its pending transactional writes."""

    workflow_id: str
    task_id: str
    attempt: int
    effect: str | None
    writes: "list[tuple[str, pa.Table]]" = field(default_factory=list)

    @property
    def idempotency_key(self) -> str:
        """The same on every attempt of this task, across crashes and resumes."""
        return f"exo:{self.workflow_id}:{self.task_id}"

    def write(self, table: str, rows: Any) -> None:
        """Append rows to ``main.<table>`` in this task's commit transaction."""
        if self.effect != "transactional":
            raise WriteNotAllowedError(self.task_id, table)
        if not isinstance(table, str) or not _TABLE.match(table):
            raise InvalidOptionError("table", table, "a plain SQL identifier such as 'sales'")
        self.writes.append((table, to_arrow(rows)))


def to_arrow(rows: Any) -> "pa.Table":
    """Accept a list of dicts, a pandas DataFrame or an Arrow table. (pyarrow is imported
    here, by the task that writes: looking at a store does not need it.)"""
    import pyarrow as pa

    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
        return pa.Table.from_pylist(rows)
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        return pa.Table.from_pandas(rows, preserve_index=False)
    raise InvalidOptionError("rows", type(rows).__name__, "a list of dicts, a pandas DataFrame or a pyarrow Table")


def current() -> TaskContext:
    ctx = _current.get()
    if ctx is None:
        raise NotInTaskError()
    return ctx


def activate(ctx: TaskContext) -> contextvars.Token:
    return _current.set(ctx)


def deactivate(token: contextvars.Token) -> None:
    _current.reset(token)
