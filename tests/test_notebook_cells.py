"""Cell analysis (jupyter_ext.cells) and task-cell wiring (jupyter_ext.notebook), without a kernel or Ray."""

from __future__ import annotations

import textwrap

import pytest

from jupyter_ext.cells import analyze, outputs
from jupyter_ext.notebook import CellOptions, Notebook, NotebookError, make_cell


@pytest.fixture(scope="session")
def ray_cluster():
    """These tests need no Ray: override the suite's session-wide Ray start."""
    yield


def names(source: str) -> tuple[set[str], set[str]]:
    result = analyze(textwrap.dedent(source))
    return set(result.defs), set(result.refs)


@pytest.mark.parametrize("source, defs, refs", [
    ("y = x + 1", {"y"}, {"x"}),
    ("x = x + 1", {"x"}, {"x"}),                       # read before written: an input
    ("x += 1", {"x"}, {"x"}),
    ("x: int = 3", {"x"}, set()),
    ("import numpy as np, os.path\nfrom a import b as c\narr = np.zeros(n)", {"np", "os", "c", "arr"}, {"n"}),
    ("def f(a, b=default):\n    return helper(a) + later\nlater = 3\nz = f(1)", {"f", "later", "z"},
     {"default", "helper"}),                           # a body reads late: `later` is the cell's own
    ("for i, (j, k) in enumerate(items):\n    total = i", {"i", "j", "k", "total"}, {"items"}),
    ("with open(p) as fh, ctx() as (a, b):\n    data = fh.read()", {"fh", "a", "b", "data"}, {"p", "ctx"}),
    ("sq = [v * v for v in vals if v > lim]", {"sq"}, {"vals", "lim"}),  # `v` is the comprehension's
    ("res = [(m := k) for k in ks]", {"m", "res"}, {"ks"}),               # walrus leaks out
    ("d = {k: v for k, v in pairs.items()}", {"d"}, {"pairs"}),
    ("g = (a for a in range(n) for b in range(a))", {"g"}, {"n"}),
    ("class A(Base):\n    attr = val\n    def m(self):\n        return self.attr + glob", {"A"},
     {"Base", "val", "glob"}),
    ("try:\n    r = 1\nexcept ValueError as e:\n    msg = str(e)", {"r", "msg"}, set()),
    ("match cmd:\n    case [a, *rest]:\n        out = a\n    case {'k': v, **kw}:\n        out = v",
     {"a", "rest", "out", "v", "kw"}, {"cmd"}),
    ("f = lambda q: q + w", {"f"}, {"w"}),
    ("if (n := len(data)) > 3:\n    big = n", {"n", "big"}, {"data"}),
    ("x = 1\ndel x\ny = 2", {"y"}, set()),
    ("async def g():\n    async for t in src:\n        yield t", {"g"}, {"src"}),
    ("def outer():\n    def inner():\n        return outer_var + k\n    k = 1\n    return inner", {"outer"},
     {"outer_var"}),
    ("def f():\n    global counter\n    counter += 1", {"f"}, {"counter"}),
    ("print(len(rows))", set(), {"rows"}),            # builtins are never refs
])
def test_defs_and_refs_of_tricky_cells(source, defs, refs):
    assert names(source) == (defs, refs)


def test_private_names_and_order():
    result = analyze("_tmp = big\nresult = _tmp * 2\nalpha = 1")
    assert result.defs == ("_tmp", "result", "alpha")
    assert outputs(result) == ("result", "alpha")


def cell(source: str, name: str | None = None, *, cell_id: str | None = None, after=(), effect=None):
    return make_cell(textwrap.dedent(source), name, CellOptions(effect=effect), after, cell_id, "cell_x")


def test_wiring_inputs_come_from_other_task_cells():
    book = Notebook("w")
    book.register(cell("import math\nraw = load(path)"))            # named after data, not the import
    book.register(cell("clean = [r for r in raw if r]\nn = len(clean)"))
    book.register(cell("report = f'{n} of {len(raw)}'", "summary", after=["raw"]))
    assert list(book.cells) == ["raw", "clean", "summary"]
    assert book.upstream("clean") == [("raw", ("raw",))]
    assert book.upstream("summary") == [("raw", ("raw",)), ("clean", ("n",))]
    assert book.cells["raw"].names.refs == ("load", "path")        # from ordinary cells


def test_registration_errors_say_what_to_do():
    book = Notebook("w")
    book.register(cell("a = 1", cell_id="c1"))
    with pytest.raises(NotebookError, match="already used by another cell.*%%exoflow task a_2"):
        book.register(cell("b = 2", "a", cell_id="c2"))
    with pytest.raises(NotebookError, match="`a` is already an output of task cell 'a'"):
        book.register(cell("a = 5\nz = 1", "other", cell_id="c3"))
    with pytest.raises(NotebookError, match="--after names 'ghost'.*Known task cells: a"):
        book.register(cell("q = 1", after=["ghost"]))
    with pytest.raises(NotebookError, match="defines no names.*--effect"):
        cell("print(a)")
    with pytest.raises(NotebookError, match="does not parse"):
        cell("x = (")
    assert cell("print(a)", "log", effect="transactional").name == "log"  # an effect cell may have no outputs


def test_the_same_cell_edited_or_renamed_replaces_itself():
    book = Notebook("w")
    book.register(cell("a = 1", cell_id="c1"))
    book.register(cell("a = 2", cell_id="c1"))
    assert book.cells["a"].source == "a = 2"
    book.register(cell("a = 3", "first", cell_id="c1"))
    assert list(book.cells) == ["first"]


def test_a_dependency_circle_is_refused():
    book = Notebook("w")
    book.register(cell("x = y + 1"))
    book.register(cell("y = x + 1"))
    with pytest.raises(NotebookError, match="circle"):
        book.build(["x"], {})


def test_unpicklable_globals_are_refused_with_a_hint():
    import threading

    book = Notebook("w")
    book.register(cell("with lock:\n    v = 1"))
    with pytest.raises(NotebookError, match="uses lock from an ordinary cell.*Create it inside this cell"):
        book.build(["v"], {"lock": threading.Lock()})
