"""The task cells of one notebook workflow: registering, wiring, running, resuming.

A :class:`Notebook` knows its task cells by name (the task id). Wiring is
recomputed on every run from the cells' names, as marimo does: a cell's
inputs are the refs that another task cell outputs, plus ``--after`` cells.
Running builds the DAG of the wanted cells and their upstream cells and hands
it to ``exo.run(..., changed=[...])``: a cell whose fingerprint differs from
the last run's (this kernel's, else the stored graph's) is stale, so it and
its downstream run again while every other checkpoint is reused.

No IPython here, so the logic is testable without a kernel; ``magics.py``
turns :class:`NotebookError` into IPython usage errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import exoflow_kernel as exo
from exoflow_kernel import stored_graph

from .cells import CellNames, analyze, outputs
from .tasks import ALL_CELLS, CellResult, CellSpec, capture_globals, cell_task, fingerprint

_NAME = re.compile(r"^[A-Za-z0-9_.:@+=-]{1,200}$")
_NOT_RUN = ("recovered", "skipped")


class NotebookError(ValueError):
    """A task cell cannot be registered or run; the message says what to do."""


@dataclass(frozen=True)
class CellOptions:
    """The engine options a task cell asks for (see ``%%exoflow task``)."""

    checkpoint: str | bool = "sync"
    deterministic: bool = True
    effect: str | None = None
    max_retries: int = 3

    def key(self) -> tuple:
        return (self.checkpoint, self.deterministic, self.effect, self.max_retries)


@dataclass(frozen=True)
class TaskCell:
    """One registered task cell."""

    name: str
    source: str
    names: CellNames
    options: CellOptions = CellOptions()
    after: tuple[str, ...] = ()
    cell_id: str | None = None
    events: tuple[str, ...] = ()  # --event: each payload becomes a variable of the same name


    @property
    def outputs(self) -> tuple[str, ...]:
        return outputs(self.names)


@dataclass
class RunReport:
    """What a run produced: every published cell's result, which cells ran, which were reused."""

    results: dict[str, CellResult]
    ran: list[str]
    reused: list[str]


def make_cell(source: str, name: str | None, options: CellOptions, after: Iterable[str],
              cell_id: str | None, default_name: str, events: Iterable[str] = ()) -> TaskCell:
    """Analyse a cell's source into a :class:`TaskCell` (its name defaults to its first output)."""
    try:
        names = analyze(source)
    except SyntaxError as exc:
        raise NotebookError(f"This task cell does not parse (line {exc.lineno}: {exc.msg}); fix it and run it again.") from None
    outs = outputs(names)
    if not outs and options.effect is None:
        raise NotebookError("This task cell defines no names, so no other cell could use it. Assign its result "
                            "(e.g. `result = ...`), or mark a cell run for its side effect with "
                            "--effect transactional|idempotent.")
    data = [o for o in outs if o not in names.imported]  # a cell is named after what it makes
    events = tuple(dict.fromkeys(events))
    bad = [e for e in events if not e.isidentifier()]
    if bad:
        raise NotebookError(f"--event {','.join(bad)}: an event's payload becomes a variable of the same name, so "
                            "use a Python identifier (e.g. --event approved).")
    return TaskCell(name or (data or outs or (default_name,))[0], source, names, options, tuple(after), cell_id,
                    events)


class Notebook:
    """The task cells of one workflow, in the order they were registered."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.cells: dict[str, TaskCell] = {}
        self.fingerprints: dict[str, str] = {}  # cell -> fingerprint of its last run here

    # -- registering ---------------------------------------------------------------

    def register(self, cell: TaskCell) -> None:
        """Add or replace a task cell, refusing anything that would make wiring ambiguous."""
        self._check_name(cell)
        for old in [c.name for c in self.cells.values() if cell.cell_id and c.cell_id == cell.cell_id]:
            del self.cells[old]  # the same notebook cell, renamed
        owners = self.owners()
        for out in cell.outputs:
            if out in cell.events:
                raise NotebookError(f"`{out}` is the payload of --event {out}; do not assign it in the same cell.")
            if owners.get(out, cell.name) != cell.name:
                raise NotebookError(f"`{out}` is already an output of task cell {owners[out]!r}. Each name must come "
                                    f"from one task cell: rename it here (e.g. `{out}_2`), or prefix it with `_` "
                                    "to keep it private to this cell.")
        unknown = [a for a in cell.after if a not in self.cells or a == cell.name]
        if unknown:
            raise NotebookError(f"--after names {', '.join(map(repr, unknown))}, which is not a registered task cell. "
                                f"Known task cells: {', '.join(self.cells) or 'none yet'}; run that cell first.")
        self.cells[cell.name] = cell

    def _check_name(self, cell: TaskCell) -> None:
        if not _NAME.match(cell.name) or cell.name.startswith("__"):
            raise NotebookError(f"{cell.name!r} cannot name a task cell: use letters, digits and _ . : @ + = - "
                                "(not starting with __), e.g. %%exoflow task load_data")
        old = self.cells.get(cell.name)
        if old is not None and old.cell_id and cell.cell_id and old.cell_id != cell.cell_id:
            raise NotebookError(f"The task name {cell.name!r} is already used by another cell. Give this cell its "
                                f"own name: %%exoflow task {cell.name}_2")

    def owners(self) -> dict[str, str]:
        """Output name -> the task cell that defines it."""
        return {out: c.name for c in self.cells.values() for out in c.outputs}

    def upstream(self, name: str) -> list[tuple[str, tuple[str, ...]]]:
        """(upstream cell, names taken from it), in registration order."""
        cell, owners = self.cells[name], self.owners()
        taken: dict[str, list[str]] = {}
        for ref in cell.names.refs:
            if owners.get(ref, name) != name:
                taken.setdefault(owners[ref], []).append(ref)
        for after in cell.after:
            taken.setdefault(after, [])
        return [(c, tuple(taken[c])) for c in self.cells if c in taken]

    # -- building ------------------------------------------------------------------

    def build(self, targets: list[str], namespace: dict) -> tuple[Any, dict[str, CellSpec]]:
        """The DAG of ``targets`` and their upstream cells: (root node, spec per cell)."""
        nodes: dict[str, Any] = {}
        specs: dict[str, CellSpec] = {}
        for target in targets:
            self._node(target, namespace, nodes, specs, ())
        if len(targets) == 1:
            return nodes[targets[0]], specs
        needed = {up for spec in specs.values() for up, _ in spec.inputs}
        leaves = tuple((t, ()) for t in specs if t not in needed)
        spec = CellSpec(ALL_CELLS, "", (), leaves, {}, fingerprint("", (), leaves, {}))
        specs[ALL_CELLS] = spec
        return cell_task(ALL_CELLS).bind(spec, *(nodes[t] for t, _ in leaves)), specs

    def _node(self, name: str, namespace: dict, nodes: dict, specs: dict, path: tuple[str, ...]) -> Any:
        if name in path:
            raise NotebookError(f"Task cells depend on each other in a circle: {' -> '.join(path + (name,))}. "
                                "Move one of the shared names into a single cell.")
        if name not in nodes:
            ups = self.upstream(name)
            up_nodes = [self._node(up, namespace, nodes, specs, path + (name,)) for up, _ in ups]
            for event in self.cells[name].events:  # the event's payload, as a result holding one variable
                key = event_task_id(event)
                if key not in nodes:
                    nodes[key] = event_task(event).bind(event, exo.wait_for_event(event))
                ups.append((key, (event,)))
                up_nodes.append(nodes[key])
            spec = self._spec(self.cells[name], tuple(ups), namespace)
            opts = self.cells[name].options
            nodes[name] = cell_task(name, *opts.key()).bind(spec, *up_nodes)
            specs[name] = spec
        return nodes[name]

    def _spec(self, cell: TaskCell, inputs: tuple, namespace: dict) -> CellSpec:
        from_cells = {n for _, names in inputs for n in names}
        wanted = [r for r in cell.names.refs if r not in from_cells]
        globals_, broken = capture_globals(wanted, namespace)
        if broken:
            raise NotebookError(f"Task cell {cell.name!r} uses {', '.join(broken)} from an ordinary cell, which cannot "
                                "be sent to a worker (it does not pickle). Create it inside this cell, or make it "
                                "the output of another task cell.")
        fp = fingerprint(cell.source, cell.options.key(), inputs, globals_)
        return CellSpec(cell.name, cell.source, cell.outputs, inputs, globals_, fp)

    # -- running -------------------------------------------------------------------

    def run(self, targets: list[str], namespace: dict) -> RunReport:
        """Run ``targets`` (one cell, or all of them) reusing every unchanged checkpoint."""
        if not targets:
            raise NotebookError(f"Workflow {self.workflow_id!r} has no task cells yet: write one with %%exoflow task.")
        root, specs = self.build(targets, namespace)
        changed = self.changed(specs)
        try:
            value = exo.run(root, workflow_id=self.workflow_id, changed=changed)
        except KeyboardInterrupt:
            exo.cancel(self.workflow_id)
            raise
        finally:
            self.fingerprints.update({n: s.fingerprint for n, s in specs.items()})
        ran = ran_cells(self.workflow_id, specs)
        single = targets[0] if len(targets) == 1 else None
        wanted = [n for n in specs if n not in (ALL_CELLS, single) and (n in targets or n in ran)]
        results = collect(self.workflow_id, wanted)
        if single is not None:
            results[single] = value
        return RunReport(results, ran, [n for n in specs if n != ALL_CELLS and n not in ran])

    def events(self, names: Iterable[str]) -> list[str]:
        """The events the cells ``names`` and their upstream cells wait for (``--event``), in order."""
        out: list[str] = []
        todo, seen = list(names), set()
        while todo:
            name = todo.pop(0)
            if name in seen or name not in self.cells:
                continue
            seen.add(name)
            out += [e for e in self.cells[name].events if e not in out]
            todo += [up for up, _ in self.upstream(name)]
        return out

    def with_downstream(self, name: str) -> list[str]:
        """``name`` and the cells after it that ran before here (their values are now stale)."""
        out, grew = [name], True
        while grew:  # wiring does not follow registration order, so grow to a fixed point
            more = [c for c in self.cells if c not in out and c in self.fingerprints
                    and any(up in out for up, _ in self.upstream(c))]
            out, grew = out + more, bool(more)
        return out

    def changed(self, specs: dict[str, CellSpec]) -> list[str]:
        """Cells whose fingerprint differs from their last run (here, else in the store)."""
        stored = stored_specs(self.workflow_id)
        before = {**{n: s.fingerprint for n, s in stored.items()}, **self.fingerprints}
        return [n for n, spec in specs.items() if n in before and before[n] != spec.fingerprint]

    def adopt(self, specs: dict[str, CellSpec], graph: Any) -> None:
        """Register the cells of a stored graph (after resume), as if they had been run here."""
        for name, spec in specs.items():
            opts = graph.nodes[name].options
            options = CellOptions(opts.checkpoint, opts.deterministic, opts.effect, opts.max_retries)
            after = tuple(up for up, names in spec.inputs if not names)
            events = tuple(names[0] for up, names in spec.inputs if up == event_task_id(names[0] if names else ""))
            self.cells[name] = TaskCell(name, spec.source, analyze(spec.source), options, after, events=events)
            self.fingerprints[name] = spec.fingerprint


def event_task_id(event: str) -> str:
    """Task id of the step that hands event ``event``'s payload to the cells waiting for it."""
    return f"{event}.payload"


def event_value(variable: str, payload: Any) -> CellResult:
    return CellResult({variable: payload})


_event_tasks: dict[str, Any] = {}


def event_task(event: str) -> Any:
    """A cheap task (no checkpoint: the event itself is durable) turning a payload into a cell result."""
    if event not in _event_tasks:
        _event_tasks[event] = exo.task(event_value, name=event_task_id(event), checkpoint=False)
    return _event_tasks[event]


def undelivered(workflow_id: str, events: Iterable[str]) -> list[str]:
    """Those of ``events`` not yet sent to the workflow (all of them for a workflow not in the store)."""
    events = list(events)
    if not events:
        return []
    quoted = workflow_id.replace("'", "''")
    try:
        sent = {row[0] for row in exo.sql(f"select name from exoflow.events where workflow_id = '{quoted}'")}
    except exo.ExoflowError:
        sent = set()
    return [e for e in events if e not in sent]


def waiting_events(workflow_id: str) -> list[str]:
    """Events the stored graph of a workflow waits for that nobody has sent yet."""
    try:
        graph = stored_graph(workflow_id)
    except exo.WorkflowNotFoundError:
        return []
    names = [n.event_name for n in graph.nodes.values() if hasattr(n, "event_name")]
    return undelivered(workflow_id, dict.fromkeys(names))


def stored_specs(workflow_id: str, graph: Any = None) -> dict[str, CellSpec]:
    """Cell specs of the graph the workflow last ran with ({} for a new workflow)."""
    if graph is None:
        try:
            graph = stored_graph(workflow_id)
        except exo.WorkflowNotFoundError:
            return {}
    specs = {t: n.args[0] for t, n in graph.nodes.items() if n.args and isinstance(n.args[0], CellSpec)}
    return {t: s for t, s in specs.items() if t != ALL_CELLS}


def ran_cells(workflow_id: str, specs: Iterable[str]) -> list[str]:
    """Cells of this run that executed (not reused from a checkpoint), in lineage order."""
    wanted = set(specs) - {ALL_CELLS}
    return [r.task_id for r in exo.lineage(workflow_id) if r.task_id in wanted and r.state not in _NOT_RUN]


def collect(workflow_id: str, names: Iterable[str]) -> dict[str, CellResult]:
    """Committed results of cells; a cell with ``--checkpoint off`` has none and is left out."""
    out = {}
    for name in names:
        try:
            out[name] = exo.output(workflow_id, task=name)
        except exo.WorkflowNotFinishedError:
            continue
    return out


def resume(workflow_id: str) -> tuple[RunReport, dict[str, CellSpec], Any]:
    """Carry on a notebook workflow from the store alone; every cell's result comes back."""
    exo.resume(workflow_id)
    graph = stored_graph(workflow_id)
    specs = stored_specs(workflow_id, graph)
    if not specs:
        raise NotebookError(f"Workflow {workflow_id!r} was not made by notebook task cells; "
                            f"use exo.resume({workflow_id!r}) and exo.output() instead.")
    ran = ran_cells(workflow_id, specs)
    return RunReport(collect(workflow_id, specs), ran, [n for n in specs if n not in ran]), specs, graph
