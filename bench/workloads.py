"""The task bodies every benchmark runs: the same plain functions for plain Ray and ExoFlow.

They live in a module (not in each script's ``__main__``) so that a script and the fresh
processes it starts (recovery's crash and resume runs) name the very same functions, and Ray
workers import them by name (Ray puts the driver's script folder on their ``sys.path``).
The baselines in ``baselines/`` run in other venvs and define their own copies of these
three one-liners (``baselines/harness.py``): they must not import anything of ours.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("chain", "fanout")


def inc(x: int) -> int:
    return x + 1


def leaf(i: int) -> int:
    return i


def total(*xs: int) -> int:
    return sum(xs)


def expected(shape: str, n: int) -> int:
    """What a ``chain`` (n x ``inc`` from 0) or a ``fanout`` (``total`` of n leaves) returns."""
    return n if shape == "chain" else n * (n - 1) // 2


def make(nbytes: int) -> np.ndarray:
    """A payload of ``nbytes`` bytes (data movement, checkpoint throughput)."""
    return np.ones(nbytes, dtype=np.uint8)


def use(a: np.ndarray) -> int:
    return int(a.nbytes)


def build(shape: str, n: int, inc, leaf, total, call):
    """The ``shape`` of size ``n`` from three task handles; ``call(handle, *args)`` is how a
    system applies one: ``h.remote(*args)`` for plain Ray (refs), ``h.bind(*args)`` for a
    lazy DAG (ExoFlow, Ray Workflows)."""
    if shape == "chain":
        node = 0
        for _ in range(n):
            node = call(inc, node)
        return node
    return call(total, *[call(leaf, i) for i in range(n)])


def remote(handle, *args):
    return handle.remote(*args)


def bind(handle, *args):
    return handle.bind(*args)
