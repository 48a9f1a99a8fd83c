"""What a cell defines and what it reads, from its AST (as marimo does).

A task cell's *defs* are the names it binds at the top level of the cell
(assignments, augmented assignments, imports, ``def``/``class``, ``for``
targets, ``with ... as``, walrus, ``match`` captures). Its *refs* are the names
it reads before binding them itself. We never execute the cell to find them:
the same analysis must work on a source read back from the store.

Reads inside a function, lambda or class body happen later (when it is
called), so a name such a body reads is a ref only if the cell binds it
nowhere at the top level. Comprehensions run at once: their free names count
where they stand. Builtins are never refs. Names starting with ``_`` are
private to the cell: they are defs but never outputs (see :func:`outputs`).
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass

_BUILTINS = frozenset(dir(builtins))
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass(frozen=True)
class CellNames:
    """The result of analysing one cell: ordered, without duplicates."""

    defs: tuple[str, ...]
    refs: tuple[str, ...]
    imported: tuple[str, ...] = ()  # the defs bound by import statements


def analyze(source: str) -> CellNames:
    """Defs and refs of a cell's source (``SyntaxError`` if it does not parse)."""
    walker = _TopLevel()
    walker.visit(ast.parse(source))
    defs = list(dict.fromkeys(walker.defs))
    late = [n for n in walker.late if n not in walker.defs]
    refs = [n for n in dict.fromkeys(walker.refs + late) if n not in _BUILTINS]
    return CellNames(tuple(defs), tuple(refs), tuple(n for n in defs if n in walker.imported))


def outputs(names: CellNames) -> tuple[str, ...]:
    """The defs other cells may use: all but ``_private`` ones."""
    return tuple(n for n in names.defs if not n.startswith("_"))


class _TopLevel(ast.NodeVisitor):
    """Walks top-level code in evaluation order, noting reads before writes."""

    def __init__(self) -> None:
        self.defs: list[str] = []
        self.refs: list[str] = []
        self.late: list[str] = []  # free names of bodies that run later
        self.imported: set[str] = set()
        self._bound: set[str] = set()

    def _load(self, name: str) -> None:
        if name not in self._bound:
            self.refs.append(name)

    def _store(self, name: str) -> None:
        self._bound.add(name)
        self.defs.append(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._load(node.id)
        elif isinstance(node.ctx, ast.Store):
            self._store(node.id)
        else:  # del x: it needs x, and x is no longer an output
            self._load(node.id)
            self._bound.discard(node.id)
            self.defs = [d for d in self.defs if d != node.id]

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.annotation)
        if node.value is not None:
            self.visit(node.value)
            self.visit(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._load(node.target.id)
        self.visit(node.value)
        self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    visit_AsyncFor = visit_For

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self._store(alias.asname or alias.name.split(".")[0])
                self.imported.add(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        for expr in _evaluated_at_definition(node):
            self.visit(expr)
        self._store(node.name)
        self.late.extend(_free_names(node))

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in _evaluated_at_definition(node):
            self.visit(expr)
        self.late.extend(_free_names(node))

    def _visit_comprehension(self, node: ast.expr) -> None:
        self.visit(node.generators[0].iter)  # evaluated here, outside the comprehension
        for name in _free_names(node):
            self._load(name)
        for name in _walrus_targets(node):
            self._store(name)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        known = node.name in self._bound if node.name else True
        if node.name:
            self._bound.add(node.name)
        for stmt in node.body:
            self.visit(stmt)
        if not known:  # ``as name`` is unbound again after the handler
            self._bound.discard(node.name)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name:
            self._store(node.name)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self._store(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self.generic_visit(node)
        if node.rest:
            self._store(node.rest)

    def visit_Global(self, node: ast.Global) -> None:
        """``global`` at the top level changes nothing."""


def _evaluated_at_definition(node: ast.AST) -> list[ast.expr]:
    """Decorators, defaults, annotations and bases: read when the def runs."""
    out: list[ast.expr] = list(getattr(node, "decorator_list", []))
    if isinstance(node, ast.ClassDef):
        return out + node.bases + [k.value for k in node.keywords]
    args = node.args
    out += [d for d in args.defaults + args.kw_defaults if d is not None]
    if not isinstance(node, ast.Lambda):
        every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
        out += [a.annotation for a in every if a.annotation is not None]
        out += [node.returns] if node.returns is not None else []
    return out


def _free_names(scope: ast.AST) -> list[str]:
    """Names a nested scope (function, lambda, class, comprehension) reads but does not bind."""
    bound, loads = _bound_in(scope), []
    for child in _direct_children(scope):
        if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load):
            loads.append(child.id)
        elif isinstance(child, ast.AugAssign) and isinstance(child.target, ast.Name):
            loads.append(child.target.id)  # x += 1 reads x
        elif isinstance(child, _SCOPES + _COMPREHENSIONS):
            loads.extend(_free_names(child))
    return [n for n in dict.fromkeys(loads) if n not in bound]


def _bound_in(scope: ast.AST) -> set[str]:
    """Names bound inside ``scope`` itself (parameters, stores, imports, defs)."""
    bound: set[str] = set()
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        args = scope.args
        every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
        bound |= {a.arg for a in every}
    declared_global: set[str] = set()
    for child in _direct_children(scope):
        if isinstance(child, ast.Name) and not isinstance(child.ctx, ast.Load):
            bound.add(child.id)
        elif isinstance(child, (ast.Import, ast.ImportFrom)):
            bound |= {a.asname or a.name.split(".")[0] for a in child.names if a.name != "*"}
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(child.name)
        elif isinstance(child, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and child.name:
            bound.add(child.name)
        elif isinstance(child, (ast.Global, ast.Nonlocal)):
            declared_global |= set(child.names)
        elif isinstance(child, _COMPREHENSIONS):
            bound |= set(_walrus_targets(child))
    return bound - declared_global


def _direct_children(scope: ast.AST):
    """Every node of ``scope``'s own body, not descending into nested scopes.

    The nested scope nodes themselves are yielded (so callers can recurse), as
    are the expressions a nested def evaluates in *this* scope (its decorators,
    defaults, bases). A comprehension's first iterable belongs to the outer scope.
    """
    stack = list(_scope_body(scope))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, _SCOPES):
            stack.extend(_evaluated_at_definition(node))
        elif isinstance(node, _COMPREHENSIONS) and node is not scope:
            stack.append(node.generators[0].iter)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _scope_body(scope: ast.AST) -> list[ast.AST]:
    if isinstance(scope, ast.Lambda):
        return [scope.body]
    if isinstance(scope, _COMPREHENSIONS):
        parts: list[ast.AST] = [scope.key, scope.value] if isinstance(scope, ast.DictComp) else [scope.elt]
        for i, gen in enumerate(scope.generators):
            parts += [gen.target, *gen.ifs] + ([gen.iter] if i else [])
        return parts
    return list(scope.body)


def _walrus_targets(comprehension: ast.expr) -> list[str]:
    """``(y := ...)`` inside a comprehension binds ``y`` in the enclosing scope."""
    return [n.target.id for n in ast.walk(comprehension) if isinstance(n, ast.NamedExpr)]
