"""``exoflow``: look at, draw and resume workflows from a shell.

    exoflow [--store DIR] list [--status S] [--json]
    exoflow [--store DIR] status ID [--json]
    exoflow [--store DIR] resume ID
    exoflow [--store DIR] graph ID -o FILE.svg [--format svg|png|dot]
    exoflow [--store DIR] lineage ID [--json]

Every command opens the store with ``exo.init``, exactly as a notebook does, so
it works in both situations a store can be in. If nobody owns the store, we
open DuckDB for the short time the command takes and close it again. If a
notebook or driver owns it, ``Store`` comes up *remote* and the owner answers
our reads over its socket from its own connection: we never touch its file
lock, so looking at a running workflow cannot break it.

Errors the engine raises (unknown workflow, unknown store, a workflow owned
elsewhere, ...) are printed as ``exoflow: error: <message>`` with exit code 2;
their messages already say what to do next, so a traceback would only hide it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

from . import api
from .errors import CliError, ExoflowError, StoreError
from .render import LEGEND

EXIT_ERROR = 2
# States whose work is behind us: durable, or not needed because what depends on it is.
DONE_STATES = ("committed", "recovered", "re-executed", "skipped")
# Workflow statuses borrow the colour of the task state they resemble: one table for everything.
STATUS_STATE = {
    "RUNNING": "running", "SUCCESSFUL": "committed", "FAILED": "failed",
    "RESUMABLE": "re-executed", "CANCELED": "pending", "PENDING": "pending",
}
FIELDS = api.TaskRecord._fields


# -- entry ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 2 on any ExoflowError (printed, no traceback), 130 on Ctrl-C."""
    args = _parser().parse_args(argv)
    out = sys.stdout
    try:
        with _opened(args.store, "writer" if args.run is cmd_resume else "reader"):
            return args.run(args, out, Style(out)) or 0
    except ExoflowError as exc:
        out.flush()
        print(f"exoflow: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exoflow", description="Look at, draw and resume ExoFlow workflows.")
    parser.add_argument("--store", metavar="DIR",
                        help="the store directory (default: $EXOFLOW_STORE, else ./.exoflow)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="workflows in the store and their status")
    p.add_argument("--status", type=str.upper, choices=sorted(STATUS_STATE), help="only workflows with this status")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("status", help="a workflow's status and how many tasks are in each state")
    p.add_argument("workflow_id")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("resume", help="carry on a crashed, failed or canceled workflow")
    p.add_argument("workflow_id")
    p.set_defaults(run=cmd_resume)

    p = sub.add_parser("graph", help="draw the workflow, coloured by recovery state")
    p.add_argument("workflow_id")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the picture")
    p.add_argument("--format", choices=("svg", "png", "dot"),
                   help="default: from the FILE suffix, else svg")
    p.set_defaults(run=cmd_graph)

    p = sub.add_parser("lineage", help="one line per task: state, attempts, timing, output size")
    p.add_argument("workflow_id")
    p.add_argument("--json", action="store_true", help="print the records of exo.lineage as a JSON list")
    p.set_defaults(run=cmd_lineage)
    return parser


@contextmanager
def _opened(store_arg: str | None, role: str) -> Iterator[Any]:
    """Open the store for one command and let go of it after, so we hold it no longer than needed."""
    root = api.store_path(store_arg)
    if not (root / "lineage.duckdb").is_file():
        # exo.init would create an empty store here; a typo in --store should say so instead.
        raise StoreError(str(root), "there is no ExoFlow store here (no lineage.duckdb)",
                         "Pass the right --store DIR or set $EXOFLOW_STORE.")
    store = api.open_store(root, role=role)
    try:
        yield store
    finally:
        api.close()  # a notebook started next can own the store


# -- commands -------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, out: TextIO, style: "Style") -> None:
    """Workflows, oldest first."""
    rows = api.list_workflows(status=args.status)
    if args.json:
        _dump([{"workflow_id": wf, "status": st} for wf, st in rows], out)
        return
    if not rows:
        print("no workflows" + (f" with status {args.status}" if args.status else ""), file=out)
        return
    table = [[wf, (st, STATUS_STATE.get(st))] for wf, st in rows]
    _print_table(["WORKFLOW", "STATUS"], table, out, style)


def cmd_status(args: argparse.Namespace, out: TextIO, style: "Style") -> None:
    """The workflow's status, its error if any, and a count of tasks per state."""
    info = _status(args.workflow_id)
    if args.json:
        _dump(info, out)
        return
    status = info["status"]
    counts = ", ".join(f"{n} {style.paint(s, s)}" for s, n in info["states"].items())
    lines = [("workflow", info["workflow_id"]), ("status", style.paint(status, STATUS_STATE.get(status))),
             ("tasks", f"{info['tasks']}" + (f": {counts}" if counts else "")), ("store", info["store"])]
    if info["error"]:
        lines.append(("error", info["error"]))
    for key, value in lines:
        print(f"{key:<9} {value}", file=out)
    _print_legend(info["states"], out, style)


def _status(workflow_id: str) -> dict:
    store = api._current_store()
    api._check_id(workflow_id)
    stored, _, _, error = store.workflow(workflow_id)
    status = api._effective_status(store, workflow_id, stored)
    states = store.state_counts(workflow_id, status == "RUNNING")  # one query, not a row per task
    return {
        "workflow_id": workflow_id, "status": status, "error": error,
        "tasks": sum(states.values()), "states": {s: states[s] for s in LEGEND if s in states},
        "store": str(store.root),
    }


def cmd_lineage(args: argparse.Namespace, out: TextIO, style: "Style") -> None:
    """One line (or JSON record) per task, as ``exo.lineage`` returns them."""
    records = api.lineage(args.workflow_id)
    if args.json:
        _dump([record_json(r) for r in records], out)
        return
    headers = ["TASK", "NAME", "STATE", "ATTEMPTS", "CHECKPOINT", "EFFECT", "STARTED", "TOOK", "BYTES"]
    table = [[r.task_id, r.name, (r.state, r.state), str(r.attempts), str(r.checkpoint), r.effect or "-",
              _when(r.started_at), _took(r.started_at, r.finished_at),
              "-" if r.output_bytes is None else str(r.output_bytes)] for r in records]
    _print_table(headers, table, out, style, right={3, 8})
    _print_legend(Counter(r.state for r in records), out, style)


def record_json(record: api.TaskRecord) -> dict:
    """A lineage record as plain JSON: same fields, timestamps as ISO strings."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in record._asdict().items()}


def cmd_graph(args: argparse.Namespace, out: TextIO, style: "Style") -> None:
    """Write the recovery graph (the same picture exo.graph gives a notebook)."""
    import graphviz

    path = Path(args.output)
    fmt = args.format or (path.suffix[1:].lower() if path.suffix[1:].lower() in ("svg", "png", "dot") else "svg")
    dot = api.graph(args.workflow_id)
    try:
        data = dot.source.encode() if fmt == "dot" else dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise CliError("graphviz's `dot` program is not installed, so no picture can be drawn: "
                       "install graphviz (apt-get install graphviz), or write --format dot") from None
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"wrote {path} ({fmt}, {len(data)} bytes)", file=out)


def cmd_resume(args: argparse.Namespace, out: TextIO, style: "Style") -> None:
    """Resume in a thread (exo.resume blocks) while this one shows progress from exo.lineage."""
    workflow_id = args.workflow_id
    api.status(workflow_id)  # an unknown id fails here, before anything starts
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=_resume_into, args=(workflow_id, outcome), name="exoflow-resume", daemon=True)
    worker.start()
    progress = Progress(workflow_id, out, style)
    try:
        while worker.is_alive():
            worker.join(0.25)
            progress.show(*_done_total(workflow_id))
    except KeyboardInterrupt:
        progress.end()
        print(f"interrupted: canceling {workflow_id} (exoflow resume {workflow_id} carries on)", file=out)
        api.cancel(workflow_id)
        worker.join(30)
        raise
    if "error" in outcome:
        progress.end()
        raise outcome["error"]
    progress.show(*_done_total(workflow_id), final=True)
    _print_summary(workflow_id, outcome["value"], out, style)


def _resume_into(workflow_id: str, outcome: dict) -> None:
    try:
        outcome["value"] = api.resume(workflow_id)
    except BaseException as exc:  # handed to the main thread, which reports it
        outcome["error"] = exc


def _done_total(workflow_id: str) -> tuple[int, int]:
    counts = api.state_counts(workflow_id)
    return sum(n for s, n in counts.items() if s in DONE_STATES), sum(counts.values())


def _print_summary(workflow_id: str, value: Any, out: TextIO, style: "Style") -> None:
    counts = api.state_counts(workflow_id)
    status = api.status(workflow_id)
    what = ", ".join(f"{counts[s]} {style.paint(s, s)}" for s in LEGEND if s in counts)
    print(f"workflow {workflow_id}: {style.paint(status, STATUS_STATE.get(status))} ({what})", file=out)
    text = repr(value)
    print(f"result: {text if len(text) <= 200 else text[:197] + '...'}", file=out)


class Progress:
    """A bar redrawn in place on a terminal; a plain line per change (at most one a second) otherwise."""

    WIDTH = 30

    def __init__(self, workflow_id: str, out: TextIO, style: "Style") -> None:
        self.workflow_id, self.out, self.tty = workflow_id, out, style.tty
        self.last: tuple[int, int] | None = None
        self.last_time = 0.0
        self.drawn = False

    def show(self, done: int, total: int, final: bool = False) -> None:
        due = self.tty or final or time.monotonic() - self.last_time >= 1.0
        if (done, total) != self.last and due:
            self.last, self.last_time = (done, total), time.monotonic()
            if self.tty:
                self._draw(done, total)
            else:
                print(f"resume {self.workflow_id}: {done}/{total} tasks durable", file=self.out, flush=True)
        if final:
            self.end()

    def _draw(self, done: int, total: int) -> None:
        filled = self.WIDTH * done // total if total else self.WIDTH
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.out.write(f"\rresume {self.workflow_id} [{bar}] {done}/{total} tasks durable")
        self.out.flush()
        self.drawn = True

    def end(self) -> None:
        """Finish the bar's line, so what is printed next starts on its own."""
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False


# -- output -----------------------------------------------------------------------------


class Style:
    """ANSI colours from graph.LEGEND, only when stdout is a terminal (and $NO_COLOR is unset)."""

    def __init__(self, out: TextIO) -> None:
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.colour = self.tty and not os.environ.get("NO_COLOR")

    def paint(self, text: str, state: str | None) -> str:
        """``text`` on its state's legend colour (black on the fill, as in the SVG)."""
        if not self.colour or state not in LEGEND:
            return text
        fill = LEGEND[state][0].lstrip("#")
        r, g, b = (int(fill[i:i + 2], 16) for i in (0, 2, 4))
        return f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{text}\x1b[0m"


def _print_table(headers: list[str], rows: list[list], out: TextIO, style: Style, right: set[int] = frozenset()) -> None:
    """Aligned columns; a cell may be (text, state) to be painted after padding is measured."""
    plain = [[c[0] if isinstance(c, tuple) else c for c in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *plain)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), file=out)
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths)):
            text, state = cell if isinstance(cell, tuple) else (cell, None)
            pad = " " * (width - len(text))
            cells.append(pad + style.paint(text, state) if i in right else style.paint(text, state) + pad)
        print("  ".join(cells).rstrip(), file=out)


def _print_legend(states: dict | Counter, out: TextIO, style: Style) -> None:
    """What the states on screen mean, in legend order."""
    shown = [s for s in LEGEND if states.get(s)]
    if shown:
        print("\n" + " · ".join(f"{style.paint(s, s)}: {LEGEND[s][1]}" for s in shown), file=out)


def _dump(obj: Any, out: TextIO) -> None:
    json.dump(obj, out, indent=2, default=str)
    out.write("\n")


def _when(ts: datetime | None) -> str:
    return "-" if ts is None else ts.strftime("%Y-%m-%d %H:%M:%S")


def _took(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{(end - start).total_seconds():.3f}s"


if __name__ == "__main__":
    sys.exit(main())
