"""The notebook's pictures as ipywidgets: a live DAG view, the recovery graph, a lineage table.

* :class:`DagView` shows ``exo.graph`` as SVG inside an ``ipywidgets.HTML``, with
  a progress line (tasks per state, elapsed time). :func:`live` displays one and
  refreshes it from a background thread every ``POLL_SECONDS`` while a run (or a
  resume) goes on in the caller's thread; after ``%exoflow resume`` the same view
  is the recovery graph (recovered / re-executed / skipped / ambiguous / stale).
* :class:`LineageTable` is an HTML table, one row per task, its state cell
  coloured with the engine's ``render.LEGEND``.
* :class:`EventButton` sends an event durably (``exo.send_event``) when clicked:
  a task cell with ``--event NAME`` shows one per event it still waits for, while
  it waits. The cell blocks the kernel's main thread, so the button's comm is
  routed to a kernel *subshell* (ipykernel >= 7), whose own thread handles the
  click; a kernel without subshells (or terminal IPython) cannot do that, and
  the magic then runs the cell in a background thread instead
  (:func:`can_wait_for_clicks`). ``event_button`` is the same button for
  workflows started from Python (``exo.run_async`` + ``exo.wait_for_event``).

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
from exoflow_kernel.api import graph_of
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
        """The store is read on the first :meth:`refresh` (or :meth:`finish`), not here: a
        cell that is over before the first poll then reads and draws once."""
        self.workflow_id = workflow_id
        self.title = title
        self.records: list = []
        self.status = "starting"
        self.svg = ""  # the graphviz SVG document ("" until the workflow is in the store)
        self.started = time.monotonic()
        self.elapsed: float | None = None  # set when the run is over
        self._drawn: tuple | None = None
        self._header = W.HTML()
        self._graph = W.HTML()
        super().__init__([self._header, self._graph])
        self.add_class("exoflow-dag")
        self._graph.add_class("exoflow-dag-graph")
        self._header.value = self.header_html()

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
                self.svg = graph_of(self.workflow_id, self.records).pipe(format="svg").decode()
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


def live(workflow_id: str, work: Callable[[], T], title: str = "workflow", events: list[str] = ()) -> T:
    """Run ``work()`` here while a :class:`DagView` of ``workflow_id`` refreshes beside it.

    The view is polled from a background thread every ``POLL_SECONDS``; when
    ``work`` returns or raises, the poller stops, the live output is blanked
    and the view is displayed with its final states (what a notebook keeps).
    ``events`` the run waits for get an :class:`EventButton` each above the
    view while it runs (the caller checked :func:`can_wait_for_clicks`); when
    the run ends they are blanked too and one line says which events arrived.
    """
    view = DagView(workflow_id, title)
    if not has_kernel():  # terminal IPython: no widget, the final text
        try:
            return work()
        finally:
            view.finish()
            print(view.text())
    from IPython.display import display

    buttons: list[EventButton] = []
    asked = None
    if events:
        box, buttons = _event_prompt(workflow_id, list(events))
        for button in buttons:  # before the button can be seen, so its first click is routed too
            _route_clicks(button)
        asked = display({**(box._repr_mimebundle_() or {}), "text/plain": ""}, raw=True, display_id=True)
    handle = display(view.live_bundle(), raw=True, display_id=True)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_SECONDS):
            try:
                view.refresh()
                for button in buttons:
                    button.refresh()
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
        if asked is not None:
            asked.update({"text/plain": ""}, raw=True)
            for button in buttons:
                button.refresh()
            arrived = [b.event for b in buttons if b.sent]
            if arrived:
                print(f"ExoFlow: event{'s' if len(arrived) > 1 else ''} {', '.join(map(repr, arrived))} arrived "
                      "and {} durable: a resumed run will not ask again".format("are" if len(arrived) > 1 else "is"))
        if handle is not None:
            handle.update({"text/plain": ""}, raw=True)
        display(view)


# -- events ------------------------------------------------------------------------------


def send_command(workflow_id: str, event: str, payload: Any = True) -> str:
    """The Python line that does what the button does."""
    return f"exo.send_event({workflow_id!r}, {event!r}, {payload!r})"


class EventButton(W.HBox):
    """A button that sends one event to one workflow, durably, once.

    ``payload`` is what the waiting task receives. After the click (or when
    :meth:`refresh` finds the event was sent by someone else) the button is
    disabled and says so; a failed send shows the error and stays clickable.
    """

    def __init__(self, workflow_id: str, event: str, payload: Any = True, description: str | None = None) -> None:
        self.workflow_id, self.event, self.payload = workflow_id, event, payload
        self.sent = False
        self.queued = False  # clicked before the workflow reached the store (Ray still starting): sent by refresh()
        self.button = W.Button(description=description or event, button_style="success", icon="check",
                               tooltip=f"send event {event!r} to workflow {workflow_id!r} (durable)")
        self.button.add_class("exoflow-event-button")
        self.note = W.HTML(self._note_html("waiting"))
        super().__init__([self.button, self.note])
        self.add_class("exoflow-event")
        self.button.on_click(lambda _: self.send())

    def _note_html(self, state: str, detail: str = "") -> str:
        text = {"waiting": f"workflow {self.workflow_id} waits for event {self.event!r}",
                "sent": f"event {self.event!r} sent to {self.workflow_id} (durable: a resumed run will not ask again)",
                "queued": f"event {self.event!r} will be sent as soon as workflow {self.workflow_id} starts",
                "error": f"could not send {self.event!r}: {detail}"}[state]
        return f'<span class="exoflow-event-note exoflow-event-{state}">{html.escape(text)}</span>'

    def send(self) -> bool:
        """What a click does: ``exo.send_event``; True once the event is in the store."""
        try:
            exo.send_event(self.workflow_id, self.event, self.payload)
        except exo.WorkflowNotFoundError:  # the run has not created it yet: refresh() sends it then
            self.queued = True
            self.button.disabled = True
            self.note.value = self._note_html("queued")
            return False
        except Exception as exc:  # shown on the button's line; the cell goes on waiting
            self.note.value = self._note_html("error", f"{type(exc).__name__}: {exc}")
            return False
        self._mark_sent()
        return True

    def click(self) -> bool:
        """Click from code (a headless run, e.g. nbval, has no one to click)."""
        return self.send()

    def refresh(self) -> None:
        """Send a queued click; disable the button if the event reached the store another way."""
        if self.queued and not self.sent:
            self.send()
        if not self.sent:
            from .notebook import undelivered

            if not undelivered(self.workflow_id, [self.event]):
                self._mark_sent()

    def _mark_sent(self) -> None:
        if not self.sent:
            self.sent = True
            self.button.disabled = True
            self.note.value = self._note_html("sent")

    def text(self) -> str:
        if self.sent:
            return f"event {self.event!r} sent to workflow {self.workflow_id!r}"
        return (f"workflow {self.workflow_id!r} waits for event {self.event!r}: click {self.button.description!r}, "
                f"or run {send_command(self.workflow_id, self.event, self.payload)}")

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = self.text()
        return bundle


def event_button(workflow_id: str, event: str, payload: Any = True, description: str | None = None) -> EventButton:
    """A button that sends ``event`` to ``workflow_id`` when clicked (display it, or let a cell end with it).

    For workflows started from Python with ``exo.run_async``: the cell returns,
    so the kernel handles the click as any widget's. In terminal IPython its
    text form names the ``exo.send_event`` line to run instead.
    """
    return EventButton(workflow_id, event, payload, description)


_subshell: dict[str, str] = {}


def can_wait_for_clicks() -> bool:
    """True in a kernel that can handle a widget's clicks while a cell blocks (ipykernel >= 7 subshells)."""
    return _subshell_id() is not None


def _subshell_id() -> str | None:
    """A kernel subshell of our own (created once): its thread handles the event buttons' clicks."""
    if not has_kernel():
        return None
    from IPython import get_ipython

    kernel = get_ipython().kernel
    if "id" in _subshell:
        return _subshell["id"]
    thread = getattr(kernel, "shell_channel_thread", None)
    if thread is None or not hasattr(thread, "manager"):
        return None
    import concurrent.futures

    manager, made = thread.manager, concurrent.futures.Future()

    def create() -> None:  # the subshell manager is only driven from the shell channel thread
        try:
            made.set_result(manager._create_subshell())
        except BaseException as exc:
            made.set_exception(exc)

    try:
        thread.io_loop.add_callback(create)
        _subshell["id"] = made.result(timeout=10)
    except Exception:
        return None
    return _subshell["id"]


def _route_clicks(button: EventButton) -> None:
    """Send the frontend's messages for this button to our subshell (the main thread is busy)."""
    comm = getattr(button.button, "comm", None)
    if comm is not None and _subshell_id() is not None:
        comm._reply_subshell_id = _subshell["id"]  # read by ipykernel's shell channel thread per comm message


def _event_prompt(workflow_id: str, events: list[str]) -> tuple[W.VBox, list[EventButton]]:
    buttons = [EventButton(workflow_id, e) for e in events]
    box = W.VBox(buttons)
    box.add_class("exoflow-events")
    return box, buttons


def ask_for_events(workflow_id: str, events: list[str], waiting: str) -> list[EventButton]:
    """The fallback when this kernel cannot wait for a click: buttons (if a widget can show) and the text.

    ``waiting`` says who waits (e.g. "task cell 'approve'"); the caller runs the work in the background.
    """
    lines = [f"ExoFlow: {waiting} waits for event{'s' if len(events) > 1 else ''} "
             f"{', '.join(map(repr, events))} of workflow {workflow_id!r}. Send "
             f"{'them' if len(events) > 1 else 'it'} (from this kernel or any process on this store) with:"]
    lines += [f"    {send_command(workflow_id, e)}" for e in events]
    lines.append("It runs in the background meanwhile; its outputs appear in the namespace when it finishes.")
    print("\n".join(lines))
    if not has_kernel():
        return []
    from IPython.display import display

    box, buttons = _event_prompt(workflow_id, events)
    display(box)
    return buttons


def _display(obj: Any) -> None:
    if has_kernel():
        from IPython.display import display

        display(obj)
    else:
        print(obj.text())
