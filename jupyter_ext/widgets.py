"""The notebook's pictures as ipywidgets: a live DAG view, the recovery graph, a lineage table.

* :class:`DagView` shows ``exo.graph`` as SVG inside an ``ipywidgets.HTML``, with
  a progress line (tasks per state, elapsed time). :func:`live` displays one and
  refreshes it from a background thread every ``POLL_SECONDS`` while a run (or a
  resume) goes on in the caller's thread; after ``%exoflow resume`` the same view
  is the recovery graph (recovered / re-executed / skipped / ambiguous / stale).
* :class:`LineageTable` is an HTML table, one row per task, its state cell
  coloured with the engine's ``render.LEGEND``.

Each widget degrades: its ``_repr_mimebundle_`` carries, beside the widget view,
a static ``text/html`` and ``image/svg+xml`` picture and a ``text/plain`` table,
so nbconvert (which drops widget views that have no saved state), nbval and
plain IPython show the state drawn. The live view is shown twice over: while the
run goes on, as the widget alone (its static forms empty); when it ends, that
output is blanked in place and the same widget is displayed again with the final
picture as its static forms. So a saved or converted notebook keeps the final
graph, and a reader of the raw messages (nbval ignores ``update_display_data``)
sees the same outputs as the saved notebook. Without a kernel (terminal IPython)
there is no widget at all: the text is printed.
"""

from __future__ import annotations

import html
import re
import threading
import time
from collections import Counter
from typing import Any, Callable, TypeVar

import ipywidgets as W

import exoflow_kernel as exo
from exoflow_kernel.render import LEGEND

from . import views

POLL_SECONDS = 0.3
T = TypeVar("T")
_PROLOG = re.compile(r"^.*?(?=<svg\b)", re.S)


def inline_svg(svg: str) -> str:
    """A graphviz SVG document as an element for HTML: no XML prolog, scaled down to fit its output area."""
    return _PROLOG.sub("", svg, count=1).replace("<svg ", '<svg style="max-width:100%;height:auto" ', 1)


def has_kernel() -> bool:
    """True in a Jupyter kernel (a widget can be shown); False in terminal IPython or no IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def chip(state: str, text: str | None = None) -> str:
    """A small box in a state's legend colour."""
    colour = LEGEND.get(state, LEGEND["pending"])[0]
    return (f'<span class="exoflow-state exoflow-state-{html.escape(state)}" style="background:{colour};'
            f'padding:1px 6px;border-radius:3px;margin-right:4px;white-space:nowrap">'
            f"{html.escape(text if text is not None else state)}</span>")


def legend_html() -> str:
    return '<div class="exoflow-legend">' + "".join(
        f'<span title="{html.escape(meaning)}">{chip(state)}</span>' for state, (_, meaning) in LEGEND.items()) + "</div>"


def counts_text(records: list) -> str:
    """``3 tasks: 2 committed, 1 running`` (states in legend order)."""
    counts = Counter(r.state for r in records)
    parts = [f"{counts[s]} {s}" for s in LEGEND if counts[s]] + [f"{n} {s}" for s, n in counts.items() if s not in LEGEND]
    return f"{len(records)} task{'s' if len(records) != 1 else ''}" + (f": {', '.join(parts)}" if parts else "")


class DagView(W.VBox):
    """A workflow's graph coloured by state, with progress counts and elapsed time."""

    def __init__(self, workflow_id: str, title: str = "workflow") -> None:
        self.workflow_id = workflow_id
        self.title = title
        self.records: list = []
        self.status = "not started"
        self.svg = ""  # the graphviz SVG document ("" until the workflow is in the store)
        self.started = time.monotonic()
        self.elapsed: float | None = None  # set when the run is over
        self._drawn: tuple | None = None
        self._header = W.HTML()
        self._graph = W.HTML()
        super().__init__([self._header, self._graph])
        self.add_class("exoflow-dag")
        self._graph.add_class("exoflow-dag-graph")
        self.refresh()

    # -- state ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the lineage; redraw the SVG only when a task's state changed."""
        try:
            self.records = exo.lineage(self.workflow_id)
            self.status = exo.status(self.workflow_id)
        except exo.WorkflowNotFoundError:
            self.records, self.status = [], "not started"
        drawn = tuple((r.task_id, r.state) for r in self.records)
        if drawn != self._drawn and self.records:
            try:
                self.svg = exo.graph(self.workflow_id).pipe(format="svg").decode()
            except Exception:  # no `dot`: the counts and the text table still tell it
                self.svg = ""
            self._drawn = drawn
            self._graph.value = inline_svg(self.svg)
        self._header.value = self.header_html()

    def finish(self) -> None:
        self.elapsed = time.monotonic() - self.started
        self.refresh()

    def seconds(self) -> float:
        return self.elapsed if self.elapsed is not None else time.monotonic() - self.started

    # -- forms -----------------------------------------------------------------------

    def header_html(self) -> str:
        counts = Counter(r.state for r in self.records)
        chips = "".join(chip(s, f"{counts[s]} {s}") for s in LEGEND if counts[s])
        when = "running" if self.elapsed is None else "done"
        return (f'<div class="exoflow-progress"><b>{html.escape(self.title)} {html.escape(self.workflow_id)}</b>: '
                f'<span class="exoflow-status">{html.escape(self.status)}</span> &middot; '
                f"{len(self.records)} tasks {chips} &middot; "
                f'<span class="exoflow-elapsed">{when}, elapsed {self.seconds():.1f} s</span></div>')

    def text(self) -> str:
        lines = [f"{self.title} {self.workflow_id}: {self.status}; {counts_text(self.records)}; "
                 f"elapsed {self.seconds():.1f} s"]
        if self.records:
            lines.append(views.table(("task", "state", "attempts"),
                                     [(r.task_id, r.state, r.attempts) for r in self.records]))
        return "\n".join(lines)

    def live_bundle(self) -> dict:
        """The widget view alone (with an empty text form): what is shown while the run goes on."""
        return {**(super()._repr_mimebundle_() or {}), "text/plain": ""}

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = self.text()
        bundle["text/html"] = (f'<div class="exoflow-dag">{self.header_html()}'
                               f"{inline_svg(self.svg)}</div>")
        if self.svg:
            bundle["image/svg+xml"] = self.svg
        return bundle


class LineageTable(W.HTML):
    """``exo.lineage`` as an HTML table; each state cell in its legend colour."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.records = exo.lineage(workflow_id)
        super().__init__(self.table_html())
        self.add_class("exoflow-lineage")

    def table_html(self) -> str:
        fields = exo.TaskRecord._fields
        head = "".join(f"<th>{html.escape(f)}</th>" for f in fields)
        rows = []
        for record in self.records:
            cells = []
            for field, value in zip(fields, views.short(record)):
                text = html.escape("" if value is None else str(value))
                if field == "state":
                    colour = LEGEND.get(record.state, LEGEND["pending"])[0]
                    cells.append(f'<td class="exoflow-state exoflow-state-{text}" style="background:{colour}">{text}</td>')
                else:
                    cells.append(f"<td>{text}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return (f'<table class="exoflow-lineage"><caption>lineage of {html.escape(self.workflow_id)}</caption>'
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def text(self) -> str:
        return views.table(exo.TaskRecord._fields, [views.short(r) for r in self.records])

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle.update({"text/plain": self.text(), "text/html": self.table_html()})
        return bundle


# -- showing ------------------------------------------------------------------------------


def show_graph(workflow_id: str, title: str = "workflow") -> None:
    """Display the graph as it is now (``%exoflow graph``)."""
    view = DagView(workflow_id, title)
    view.finish()
    _display(view)


def show_lineage(workflow_id: str) -> None:
    _display(LineageTable(workflow_id))


def live(workflow_id: str, work: Callable[[], T], title: str = "workflow") -> T:
    """Run ``work()`` here while a :class:`DagView` of ``workflow_id`` refreshes beside it.

    The view is polled from a background thread every ``POLL_SECONDS``; when
    ``work`` returns or raises, the poller stops, the live output is blanked
    and the view is displayed with its final states (what a notebook keeps).
    """
    view = DagView(workflow_id, title)
    if not has_kernel():  # terminal IPython: no widget, the final text
        try:
            return work()
        finally:
            view.finish()
            print(view.text())
    from IPython.display import display

    handle = display(view.live_bundle(), raw=True, display_id=True)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_SECONDS):
            try:
                view.refresh()
            except Exception:  # a picture must never break the run it shows
                pass

    poller = threading.Thread(target=poll, name=f"exoflow-view-{workflow_id}", daemon=True)
    poller.start()
    try:
        return work()
    finally:
        stop.set()
        poller.join(timeout=10)
        try:
            view.finish()
        except Exception:  # the store went away under us: show what was last read
            pass
        if handle is not None:
            handle.update({"text/plain": ""}, raw=True)
        display(view)


def _display(obj: Any) -> None:
    if has_kernel():
        from IPython.display import display

        display(obj)
    else:
        print(obj.text())
