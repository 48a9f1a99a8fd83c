"""Tasks, their options, lazy nodes, and the workflow graph built from them.

A ``@exo.task`` function is a :class:`TaskFunction`; ``f.bind(...)`` makes a
:class:`Node` without running anything. :func:`build_graph` walks the nodes
reachable from a root and gives every node a stable task id (its name, with
``.1``, ``.2``... for repeats in bind order), so a resumed process that rebuilds
the same graph finds the same ids in the store.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import CycleError, InvalidOptionError, TaskArgumentsError

if TYPE_CHECKING:
    import networkx as nx

_CHECKPOINT_MODES = ("sync", "async", False)
_EFFECTS = (None, "transactional", "idempotent")
_bind_counter = itertools.count()


@dataclass(frozen=True)
class TaskOptions:
    """What a task asks of the engine. Validated once, here."""

    name: str | None = None
    checkpoint: str | bool = "sync"
    deterministic: bool = True
    effect: str | None = None
    max_retries: int = 3
    retry_exceptions: bool | tuple = False
    wait_until_committed: tuple[str, ...] = ()
    ray_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.checkpoint is True:
            object.__setattr__(self, "checkpoint", "sync")
        if self.checkpoint not in _CHECKPOINT_MODES:
            raise InvalidOptionError("checkpoint", self.checkpoint, '"sync", "async" or False')
        if self.effect not in _EFFECTS:
            raise InvalidOptionError("effect", self.effect, 'None, "transactional" or "idempotent"')
        if not isinstance(self.deterministic, bool):
            raise InvalidOptionError("deterministic", self.deterministic, "True or False")
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise InvalidOptionError("max_retries", self.max_retries, "an integer >= 0")
        if self.name is not None and (not isinstance(self.name, str) or not _valid_name(self.name)):
            raise InvalidOptionError("name", self.name, "a non-empty string without '/' or whitespace")
        if not _retry_exceptions_ok(self.retry_exceptions):
            raise InvalidOptionError("retry_exceptions", self.retry_exceptions,
                                     "True, False or a list of exception classes (e.g. [ValueError])")
        if isinstance(self.retry_exceptions, list):
            object.__setattr__(self, "retry_exceptions", tuple(self.retry_exceptions))
        if isinstance(self.wait_until_committed, str):
            object.__setattr__(self, "wait_until_committed", (self.wait_until_committed,))
        if not isinstance(self.wait_until_committed, (list, tuple)) or not all(
                isinstance(n, str) and n for n in self.wait_until_committed):
            raise InvalidOptionError("wait_until_committed", self.wait_until_committed,
                                     "a task name or a list of task names")
        object.__setattr__(self, "wait_until_committed", tuple(self.wait_until_committed))
        _check_ray_options(self.ray_options)
        self._check_combinations()

    def _check_combinations(self) -> None:
        if self.checkpoint is False and self.effect is not None:
            raise InvalidOptionError(
                "checkpoint", False,
                f'"sync" or "async" for a task with effect={self.effect!r} '
                "(its commit must be durable, or recovery would apply the effect twice)",
            )
        if not self.deterministic and self.checkpoint != "sync":
            raise InvalidOptionError(
                "checkpoint", self.checkpoint,
                '"sync" for a task with deterministic=False (its output must be durable '
                "before anything downstream commits)",
            )

    def merged(self, **changes: Any) -> "TaskOptions":
        known = {f for f in self.__dataclass_fields__ if f != "ray_options"}
        ours = {k: v for k, v in changes.items() if k in known}
        ray_opts = {**self.ray_options, **{k: v for k, v in changes.items() if k not in known}}
        return replace(self, **ours, ray_options=ray_opts)


def _valid_name(name: str) -> bool:
    return bool(name) and "/" not in name and not any(c.isspace() for c in name)


def _retry_exceptions_ok(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and all(
        isinstance(e, type) and issubclass(e, BaseException) for e in value)


_OURS = {"num_returns": "nothing: a task returns one value (return a tuple for several)",
         "max_retries": "max_retries as an exo.task option", "retry_exceptions": "retry_exceptions as an exo.task option",
         "name": "name as an exo.task option"}


def _check_ray_options(options: dict) -> None:
    """Check Ray options when the task is declared, not when the first run submits it
    (there a typo would surface as a raw Ray error in the middle of a workflow)."""
    for key, value in options.items():
        if key in _OURS:
            raise InvalidOptionError(key, value, _OURS[key])
    if not options:  # nothing for Ray to check: do not import it just to declare a task
        return
    try:
        from ray._common.ray_option_utils import task_options, validate_task_options
    except ImportError:  # another Ray layout: Ray checks them at the first submission instead
        return
    for key, value in options.items():
        if key not in task_options:
            known = ", ".join(k for k in task_options if not k.startswith("_") and k not in _OURS)
            raise InvalidOptionError(key, value, f"a Ray task option ({known}); check the spelling")
    try:
        validate_task_options(dict(options), in_options=False)
    except (TypeError, ValueError) as exc:
        key = next((k for k in options if repr(k) in str(exc) or k in str(exc)), next(iter(options)))
        raise InvalidOptionError(key, options[key], f"a valid Ray option value ({exc})") from None


_signatures: "weakref.WeakKeyDictionary[TaskFunction, inspect.Signature | None]" = weakref.WeakKeyDictionary()


class TaskFunction:
    """A function turned into a workflow task by ``@exo.task``."""

    def __init__(self, func: Callable, options: TaskOptions) -> None:
        if not callable(func):
            raise InvalidOptionError("task", func, "a function")
        self.func = func
        self.task_options = options
        functools.update_wrapper(self, func)

    @property
    def name(self) -> str:
        return self.task_options.name or getattr(self.func, "__name__", "task")

    def bind(self, *args: Any, **kwargs: Any) -> "Node":
        """Make a lazy node: nothing runs until ``exo.run``."""
        signature = self._signature()
        if signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TaskArgumentsError(self.name, str(exc), str(signature)) from None
        return Node(self, args, kwargs)

    def _signature(self) -> "inspect.Signature | None":
        """The function's signature, found once (None if Python cannot tell it)."""
        try:
            return _signatures[self]
        except KeyError:
            try:
                sig = inspect.signature(self.func)
            except (TypeError, ValueError):
                sig = None
            _signatures[self] = sig
            return sig

    def options(self, **changes: Any) -> "TaskFunction":
        """A copy of this task with other options (Ray options pass through)."""
        return TaskFunction(self.func, self.task_options.merged(**changes))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling a task directly runs the plain function, outside any workflow."""
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<exo.task {self.name}>"


class Node:
    """One application of a task to arguments; arguments may be other nodes."""

    def __init__(self, task: TaskFunction, args: tuple, kwargs: dict) -> None:
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self.order = next(_bind_counter)

    @property
    def options(self) -> TaskOptions:
        return self.task.task_options

    def upstream(self) -> list["Node"]:
        return [n for n in _walk((self.args, self.kwargs)) if isinstance(n, Node)]

    def __repr__(self) -> str:
        return f"<exo node {self.task.name}#{self.order}>"


class EventNode(Node):
    """A node whose value is the payload of a named event (``exo.wait_for_event``)."""

    def __init__(self, event_name: str) -> None:
        if not isinstance(event_name, str) or not _valid_name(event_name):
            raise InvalidOptionError("event name", event_name, "a non-empty string without '/' or whitespace")
        super().__init__(TaskFunction(_event_placeholder, TaskOptions(name=f"event:{event_name}")), (), {})
        self.event_name = event_name


def _event_placeholder() -> None:  # pragma: no cover - never executed, events are not Ray tasks
    raise RuntimeError("event nodes are resolved by the coordinator")


@dataclass
class Continuation:
    """Returned by a task to say: my value is the value of this sub-graph."""

    node: Node

    def __post_init__(self) -> None:
        if not isinstance(self.node, Node):
            raise InvalidOptionError("continuation", self.node, "a node made with task.bind(...)")


def _walk(obj: Any) -> Iterator[Any]:
    """Yield every leaf of nested lists, tuples and dict values (nodes live there)."""
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _walk(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _walk(item)
    else:
        yield obj


@dataclass
class Graph:
    """The workflow DAG: nodes by task id, their edges, and one topological order.

    Edges are kept as plain lists (the coordinator asks for them per task, on its
    hot path); :attr:`digraph` makes a networkx view when an algorithm needs one.
    """

    nodes: dict[str, Node]
    ids: dict[int, str]
    root: str
    topo: list[str]
    ups: dict[str, list[str]]
    downs: dict[str, list[str]]

    def upstream(self, task_id: str) -> list[str]:
        return self.ups[task_id]

    def downstream(self, task_id: str) -> list[str]:
        return self.downs[task_id]

    def order(self) -> list[str]:
        return self.topo

    @property
    def digraph(self) -> "nx.DiGraph":
        """The graph for networkx's algorithms. networkx is imported here, on first use:
        the CLI's read commands never need it, and it is a third of their start-up."""
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(self.topo)
        graph.add_edges_from((u, t) for t in self.topo for u in self.ups[t])
        return graph

    def graft(self, sub: "Graph") -> None:
        """Add a continuation's sub-graph (its tasks come after ours in the order)."""
        self.ids.update(sub.ids)
        for task_id in sub.topo:
            if task_id not in self.nodes:
                self.nodes[task_id] = sub.nodes[task_id]
                self.topo.append(task_id)
                self.ups[task_id] = sub.ups[task_id]
                self.downs[task_id] = sub.downs[task_id]


def build_graph(root: Node, prefix: str = "") -> Graph:
    """Collect the nodes reachable from ``root`` and give each a stable id."""
    if not isinstance(root, Node):
        raise InvalidOptionError("workflow root", root, "a node made with task.bind(...)")
    found: dict[int, Node] = {}
    node_ups: dict[int, list[Node]] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in found:
            continue
        found[id(node)] = node
        node_ups[id(node)] = node.upstream()
        stack.extend(node_ups[id(node)])
    # Bind order is topological (a node can only bind nodes that already exist),
    # unless someone edited a node's arguments by hand: then networkx decides.
    in_order = sorted(found.values(), key=lambda n: n.order)
    ids = _assign_ids(in_order, prefix)
    ups = {ids[id(n)]: list(dict.fromkeys(ids[id(u)] for u in node_ups[id(n)])) for n in in_order}
    downs: dict[str, list[str]] = {t: [] for t in ups}
    for task_id, task_ups in ups.items():
        for u in task_ups:
            downs[u].append(task_id)
    graph = Graph({ids[id(n)]: n for n in in_order}, ids, ids[id(root)], [ids[id(n)] for n in in_order], ups, downs)
    if any(n.order <= u.order for n in in_order for u in node_ups[id(n)]):
        import networkx as nx

        digraph = graph.digraph
        if not nx.is_directed_acyclic_graph(digraph):
            raise CycleError([u for u, _ in nx.find_cycle(digraph)])
        graph.topo = list(nx.topological_sort(digraph))
    return graph


def _assign_ids(nodes: list[Node], prefix: str) -> dict[int, str]:
    seen: dict[str, int] = {}
    ids = {}
    for node in nodes:
        name = node.task.name
        count = seen.get(name, 0)
        seen[name] = count + 1
        ids[id(node)] = prefix + (name if count == 0 else f"{name}.{count}")
    return ids


@dataclass(frozen=True)
class _Ref:
    """In a flattened graph: "the node at this index"."""

    index: int


def flatten(graph: Graph) -> list[tuple]:
    """The graph as a flat list (task, args, kwargs) in topological order, nodes as
    indexes: it pickles without recursion, however deep the chain."""
    index = {id(graph.nodes[t]): i for i, t in enumerate(graph.topo)}
    out = []
    for task_id in graph.topo:
        node = graph.nodes[task_id]
        args, kwargs = _swap((node.args, node.kwargs), lambda n: _Ref(index[id(n)]))
        out.append((node.event_name if isinstance(node, EventNode) else node.task, args, kwargs))
    return out


def unflatten(flat: list[tuple]) -> Node:
    """Rebuild the nodes of :func:`flatten` in the same bind order; return the root."""
    nodes: list[Node] = []
    for task, args, kwargs in flat:
        if isinstance(task, str):
            nodes.append(EventNode(task))
            continue
        args, kwargs = _swap((args, kwargs), lambda r: nodes[r.index], kind=_Ref)
        nodes.append(Node(task, args, kwargs))
    return nodes[-1]


def _swap(obj: Any, fn: Callable, kind: type = Node) -> Any:
    if isinstance(obj, kind):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_swap(x, fn, kind) for x in obj)
    if isinstance(obj, dict):
        return {k: _swap(v, fn, kind) for k, v in obj.items()}
    return obj


def checkpoint_mode(opts: TaskOptions, is_result: bool) -> str | bool:
    """A task's checkpoint mode. A workflow's root (and a continuation's) always
    checkpoints: it is the result that ``exo.run`` with the same id and
    ``exo.output`` return without running anything again."""
    return opts.checkpoint or ("sync" if is_result else False)


def task_row(graph: Graph, task_id: str, parent: str | None = None) -> tuple:
    """Static description of a task, as stored in ``exoflow.tasks``."""
    opts = graph.nodes[task_id].options
    checkpoint = checkpoint_mode(opts, task_id == graph.root) or "off"
    return (task_id, graph.nodes[task_id].task.name, checkpoint, opts.deterministic, opts.effect,
            graph.upstream(task_id), parent)
