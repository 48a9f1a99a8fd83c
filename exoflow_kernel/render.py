"""Pictures of a workflow: a graphviz.Digraph coloured by recovery state.

(Not named graph.py: that would shadow ``exo.graph`` once imported.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import graphviz

# state -> (fill colour, meaning). The widget and the CLI use the same table.
LEGEND: dict[str, tuple[str, str]] = {
    "pending": ("#e0e0e0", "not run yet"),
    "running": ("#90caf9", "running now"),
    "committed": ("#a5d6a7", "ran and committed"),
    "recovered": ("#80deea", "loaded from checkpoint"),
    "re-executed": ("#ffcc80", "ran again during recovery"),
    "skipped": ("#f5f5f5", "not needed"),
    "failed": ("#ef9a9a", "failed"),
    "stale": ("#ce93d8", "code changed"),
    "ambiguous": ("#fff176", "effect intent, no commit"),
}


def render(workflow_id: str, records: Iterable, edges: Iterable[tuple[str, str]],
           parents: Iterable[tuple[str, str]] = ()) -> graphviz.Digraph:
    import graphviz  # here, not at the top: `exoflow status` has no picture to draw
    dot = graphviz.Digraph(name=workflow_id, graph_attr={"rankdir": "LR", "label": workflow_id, "labelloc": "t", "fontname": "Helvetica"},
                           node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica"})
    for rec in records:
        colour = LEGEND.get(rec.state, LEGEND["pending"])[0]
        dot.node(rec.task_id, f"{rec.task_id}\n{rec.state}", fillcolor=colour)
    for src, dst in edges:
        _edge(dot, src, dst)
    for parent, child in parents:
        _edge(dot, parent, child, style="dashed", arrowhead="none")
    dot.node("legend", _legend_label(), shape="plaintext", style="")
    return dot


def _edge(dot: graphviz.Digraph, src: str, dst: str, **attrs: str) -> None:
    """An edge between two task ids. ``dot.edge`` would read ``event:approved`` as node
    "event", port "approved" (a phantom node): such ids are quoted whole instead."""
    if ":" not in src and ":" not in dst:
        dot.edge(src, dst, **attrs)
        return
    import graphviz

    quote, extra = graphviz.quoting.quote, graphviz.quoting.a_list(attributes=attrs)
    dot.body.append(f"\t{quote(src)} -> {quote(dst)}{f' [{extra}]' if extra else ''}\n")


def _legend_label() -> str:
    """One compact row: a coloured cell per state, its meaning in small print below."""
    cells = "".join(f'<td bgcolor="{colour}">{state}<br/><font point-size="9">{meaning}</font></td>'
                    for state, (colour, meaning) in LEGEND.items())
    return (f'<<table border="0" cellborder="1" cellspacing="0" cellpadding="4">'
            f'<tr><td border="0">legend</td>{cells}</tr></table>>')
