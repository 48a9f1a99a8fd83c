"""The ``%exoflow`` / ``%%exoflow`` magic: parsing, errors, and talking to the user.

One magic with sub-commands (fixed by DESIGN.md). Each sub-command's options
are declared with IPython's ``magic_arguments`` on a small stub, so argparse
does the checking and ``%exoflow?`` shows the real help of all of them. Every
problem the user can fix is a ``UsageError`` saying what to do next; the
logic lives in ``notebook.py``, the text in ``views.py``, the widgets (live DAG,
recovery graph, lineage table) in ``widgets.py``.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

import exoflow_kernel as exo

from . import notebook as nb
from . import views, widgets
from .tasks import cell_task, unpack

DEFAULT_WORKFLOW = "notebook"
_WORKFLOW_ID = re.compile(r"^[A-Za-z0-9_.:@+=-]{1,200}$")


# -- sub-command parsers (stubs: only their decorators and docstrings matter) ---------------


@magic_arguments("exoflow init")
@argument("--store", metavar="DIR", help="store directory (default: $EXOFLOW_STORE, else ./.exoflow)")
@argument("--workflow", metavar="ID", help=f"workflow id of this notebook (default: {DEFAULT_WORKFLOW})")
@argument("--ray-address", metavar="ADDR", help="join this Ray cluster instead of starting a local one")
def _init(): """Open the store and choose the workflow this notebook's task cells belong to."""


@magic_arguments("%exoflow task")
@argument("name", nargs="?", metavar="NAME", help="task id (default: the cell's first output name)")
@argument("--checkpoint", choices=("sync", "async", "off"), default="sync", help="when the output becomes durable")
@argument("--nondeterministic", action="store_true", help="recovery reuses the stored output, never a fresh one")
@argument("--effect", choices=("transactional", "idempotent"), help="rows via exo.context().write, or a keyed call")
@argument("--retries", type=int, default=3, metavar="N", help="retries after a worker dies (default 3)")
@argument("--after", default="", metavar="A,B", help="also run after these task cells (dependencies the code hides)")
@argument("--event", default="", metavar="NAME[,NAME]", help="wait for these events (exo.send_event): each payload "
          "becomes a variable of that name; a button sends it while the cell waits")
@argument("--defer", action="store_true", help="only register the cell; %%exoflow run runs it")
def _task(): """Make this cell a task: inputs are names other task cells define, outputs the names it defines."""


@magic_arguments("exoflow run")
@argument("workflow", nargs="?", metavar="ID")
def _run(): """Run every registered task cell as one DAG and publish all outputs."""


@magic_arguments("exoflow resume")
@argument("workflow", nargs="?", metavar="ID")
def _resume(): """After a crash, in a fresh kernel: finish the workflow from the store and restore every output."""


@magic_arguments("exoflow status")
@argument("workflow", nargs="?", metavar="ID")
def _status(): """Print the workflow's status and each task's state."""


@magic_arguments("exoflow list")
def _list(): """Print every workflow in the store with its status."""


@magic_arguments("exoflow graph")
@argument("workflow", nargs="?", metavar="ID")
def _graph(): """Show the graph coloured by recovery state."""


@magic_arguments("exoflow lineage")
@argument("workflow", nargs="?", metavar="ID")
def _lineage(): """Print one lineage record per task."""


PARSERS: dict[str, Callable] = {"init": _init, "task": _task, "run": _run, "resume": _resume, "status": _status,
                                "list": _list, "graph": _graph, "lineage": _lineage}


def _parse(command: str, argline: str) -> Any:
    try:
        return parse_argstring(PARSERS[command], argline)
    except UsageError as exc:
        usage = PARSERS[command].parser.format_usage().replace("::", "").strip()
        raise UsageError(f"{exc}\n{usage}\nSee %exoflow? for every option.") from None


# -- the magic ----------------------------------------------------------------------


@magics_class
class ExoflowMagics(Magics):
    """Holds the notebook's session: the store, the current workflow, its task cells."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.workflow_id: str | None = None
        self.notebooks: dict[str, nb.Notebook] = {}
        self.cell_id: str | None = None
        self.banner: str | None = None  # shown with the first cell when the kernel starts with us
        self.announced: str | None = None  # the last banner printed (said once, not twice)

    def note_cell(self, info: Any) -> None:
        """pre_run_cell hook: remember the front-end's cell id (tells two cells apart)."""
        self.cell_id = getattr(info, "cell_id", None)
        if self.banner:
            print(self.banner)
            self.announced, self.banner = self.banner, None

    @line_cell_magic
    def exoflow(self, line: str, cell: str | None = None) -> None:
        command, _, rest = line.strip().partition(" ")
        if command not in PARSERS:
            raise UsageError(f"Unknown sub-command {command!r} for %exoflow. Use one of: {', '.join(PARSERS)} "
                             "(see %exoflow? for help).")
        if (command == "task") != (cell is not None):
            raise UsageError("`task` is a cell magic: start the cell with %%exoflow task [NAME] [options]."
                             if command == "task" else f"`{command}` is a line magic: write %exoflow {command} "
                             "on its own line, not as the first line of a cell.")
        args = _parse(command, rest)
        try:
            getattr(self, f"_do_{command}")(args, cell) if command == "task" else getattr(self, f"_do_{command}")(args)
        except nb.NotebookError as exc:
            raise UsageError(str(exc)) from None
        except (exo.WorkflowNotFoundError, exo.TaskNotFoundError, exo.WorkflowLiveError,
                exo.InvalidOptionError, exo.StoreError) as exc:
            raise UsageError(str(exc)) from None

    # -- sub-commands -----------------------------------------------------------------

    def _do_init(self, args: Any) -> None:
        workflow = args.workflow or DEFAULT_WORKFLOW
        if not _WORKFLOW_ID.match(workflow):
            raise UsageError(f"Invalid workflow id {workflow!r}: use 1-200 letters, digits or _ . : @ + = -")
        store = exo.init(args.store, ray_address=args.ray_address)
        self.workflow_id = workflow
        print(f"ExoFlow: store {store.root}, workflow {workflow!r}")
        banner = views.resumable_banner()
        if banner and banner != self.announced:  # not if the start-up banner said it just now
            print(banner)
            self.announced = banner

    def _do_task(self, args: Any, source: str) -> None:
        book = self._notebook(None, create=True)
        options = nb.CellOptions(False if args.checkpoint == "off" else args.checkpoint,
                                 not args.nondeterministic, args.effect, args.retries)
        after = [a.strip() for a in args.after.split(",") if a.strip()]
        events = [e.strip() for e in args.event.split(",") if e.strip()]
        cell = nb.make_cell(source, args.name, options, after, self.cell_id, f"cell_{len(book.cells) + 1}", events)
        _check_options(cell)
        book.register(cell)
        if not args.defer:
            targets = book.with_downstream(cell.name)
            self._run_cells(book, targets, cell.name, f"task cell {cell.name!r}")

    def _do_run(self, args: Any) -> None:
        book = self._notebook(args.workflow)
        self._run_cells(book, list(book.cells), None, f"workflow {book.workflow_id!r}")

    def _run_cells(self, book: nb.Notebook, targets: list[str], single: str | None, who: str) -> None:
        """Run task cells with the live view; with a button for each event they still wait for."""
        waiting = nb.undelivered(book.workflow_id, book.events(targets))
        work = lambda: book.run(targets, self.shell.user_ns)  # noqa: E731
        if waiting and not widgets.can_wait_for_clicks():  # no click can reach a blocked kernel: wait elsewhere
            widgets.ask_for_events(book.workflow_id, waiting, who)
            self._in_background(lambda: self._publish(work(), single=single))
            return
        self._publish(widgets.live(book.workflow_id, work, events=waiting), single=single)

    def _do_resume(self, args: Any) -> None:
        workflow = self._workflow(args.workflow)
        waiting = nb.waiting_events(workflow)

        def finish(result: tuple) -> None:
            report, specs, graph = result
            book = self.notebooks.setdefault(workflow, nb.Notebook(workflow))
            book.adopt(specs, graph)
            self._publish(report)

        self.workflow_id = workflow
        if waiting and not widgets.can_wait_for_clicks():
            widgets.ask_for_events(workflow, waiting, f"workflow {workflow!r}")
            self._in_background(lambda: finish(nb.resume(workflow)))
            return
        finish(widgets.live(workflow, lambda: nb.resume(workflow), title="recovery of", events=waiting))

    def _in_background(self, work: Callable[[], None]) -> None:
        """Run ``work`` in a thread (the kernel stays free for the event); report a failure as a line."""
        def run() -> None:
            try:
                work()
            except Exception as exc:
                print(f"ExoFlow: the background run failed: {type(exc).__name__}: {exc}")

        threading.Thread(target=run, name="exoflow-waiting", daemon=True).start()

    def _do_status(self, args: Any) -> None:
        print(views.states_table(self._workflow(args.workflow)))

    def _do_list(self, args: Any) -> None:
        self._ensure_init()
        print(views.workflows_table())

    def _do_graph(self, args: Any) -> None:
        widgets.show_graph(self._workflow(args.workflow))

    def _do_lineage(self, args: Any) -> None:
        widgets.show_lineage(self._workflow(args.workflow))

    # -- helpers ----------------------------------------------------------------------

    def _ensure_init(self) -> None:
        if self.workflow_id is None:
            self._do_init(_parse("init", ""))

    def _workflow(self, workflow: str | None) -> str:
        self._ensure_init()
        workflow = workflow or self.workflow_id
        exo.status(workflow)  # unknown: WorkflowNotFoundError, which says how to find the right id
        return workflow

    def _notebook(self, workflow: str | None, create: bool = False) -> nb.Notebook:
        self._ensure_init()
        workflow = workflow or self.workflow_id
        if workflow not in self.notebooks and not create:
            exo.status(workflow)  # not in the store either: a clear "no such workflow"
            raise UsageError(f"Workflow {workflow!r} has no task cells in this kernel. After a crash use "
                             f"%exoflow resume {workflow}; otherwise run its %%exoflow task cells first.")
        return self.notebooks.setdefault(workflow, nb.Notebook(workflow))

    def _publish(self, report: nb.RunReport, single: str | None = None) -> None:
        """Put results into the user's namespace and show what the cells printed."""
        for name, result in report.results.items():
            self.shell.user_ns.update({k: unpack(v) for k, v in result.values.items()})
        for name in report.ran:
            text = report.results[name].stdout if name in report.results else ""
            if text:
                print(text if single == name else f"[{name}]\n{text}", end="" if text.endswith("\n") else "\n")
        if single is None or report.ran != [single]:
            print(f"exoflow: ran {', '.join(report.ran) or 'nothing'}; "
                  f"reused {', '.join(report.reused) or 'nothing'} (from checkpoints)")


def _check_options(cell: nb.TaskCell) -> None:
    """Let the engine judge option combinations now, before anything is registered."""
    try:
        cell_task(cell.name, *cell.options.key())
    except exo.InvalidOptionError as exc:
        raise UsageError(f"{exc} Change the %%exoflow task options of this cell.") from None


def _help() -> str:
    parts = ["ExoFlow: notebook cells as durable, exactly-once workflow tasks.\n"]
    parts += [PARSERS[c].__doc__ for c in PARSERS]
    return "\n".join(parts)


ExoflowMagics.exoflow.__doc__ = _help()


def register(shell: Any) -> ExoflowMagics:
    """Register the magic and the cell-id hook on ``shell``; announce resumable workflows.

    Loaded while a kernel starts (the ExoFlow kernel), output has no cell to go
    to, so the banner waits for the first cell; loaded from a cell, it prints now.
    """
    magics = ExoflowMagics(shell)
    shell.register_magics(magics)
    shell.events.register("pre_run_cell", magics.note_cell)
    shell.observe(_on_exit, names="exit_now")
    banner = startup_banner()
    if banner and getattr(shell, "parent_header", True):
        print(banner)
    else:
        magics.banner = banner
    return magics


def _on_exit(change: dict) -> None:
    """ipykernel sets ``exit_now`` when asked to shut down, then SIGTERMs every child
    process left and waits for them, longer than Jupyter waits for it (5 s) when they are
    a local Ray. Stopping our Ray first makes shutting the kernel down take ~1 s."""
    if change["new"]:
        from exoflow_kernel.api import shutdown

        shutdown()


def startup_banner() -> str | None:
    """At kernel start: name workflows a dead kernel left running, if the default store exists."""
    from exoflow_kernel.api import store_path

    if not (store_path() / "lineage.duckdb").exists():
        return None
    try:
        exo.init()
        return views.resumable_banner()
    except Exception:  # e.g. a store another process owns: a banner must never break start-up
        return None
