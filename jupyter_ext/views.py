"""How workflows look as text: the tables printed by the magics and used as the
``text/plain`` form of every widget (``widgets.py``), so each view degrades to
readable text in plain IPython, nbconvert and test transcripts.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import exoflow_kernel as exo


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A fixed-width text table (empty cells for None)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def states_table(workflow_id: str) -> str:
    """One line per task: its recovery state and attempts."""
    rows = [(r.task_id, r.state, r.attempts) for r in exo.lineage(workflow_id)]
    return f"workflow {workflow_id}: {exo.status(workflow_id)}\n" + table(("task", "state", "attempts"), rows)


def lineage_table(workflow_id: str) -> str:
    """Every field of ``exo.lineage``."""
    records = exo.lineage(workflow_id)
    return table(exo.TaskRecord._fields, [short(r) for r in records])


def short(record: exo.TaskRecord) -> tuple:
    return tuple(v.strftime("%H:%M:%S") if hasattr(v, "strftime") else v for v in record)


def workflows_table() -> str:
    rows = exo.list_workflows()
    return table(("workflow", "status"), rows) if rows else "No workflows in this store yet."


def resumable_banner() -> str | None:
    """One short line naming workflows a dead kernel left running, with the command to resume."""
    left = [wf for wf, _ in exo.list_workflows(status="RESUMABLE")]
    if not left:
        return None
    return (f"ExoFlow: {len(left)} workflow(s) left running by a dead kernel: {', '.join(left)}. "
            f"Resume with: %exoflow resume {left[0]}")
