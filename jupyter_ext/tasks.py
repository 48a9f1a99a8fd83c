"""A task cell as an engine task: what travels to the worker, and what runs there.

Every task cell runs through one generic task, :func:`run_cell`, made per cell
with ``.options(name=<cell name>, checkpoint=..., effect=...)``. Its first
argument is a :class:`CellSpec` (the source, the names it exchanges, the
ordinary-cell globals it needs); the others are the upstream cells' results.
The spec is pickled into the stored graph, so a fresh kernel (or the CLI) can
resume the notebook without any cell being re-run by hand.

No IPython here: Ray workers and ``exoflow resume`` import this module.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import importlib
import inspect
import io
import types
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

import exoflow_kernel as exo

ALL_CELLS = "__notebook__"  # task id of the root that gathers every cell (%exoflow run)


@dataclass(frozen=True)
class CellSpec:
    """Everything a worker needs to run one task cell, and how to spot a change.

    ``inputs`` pairs each upstream cell (in the order of the task's arguments)
    with the names taken from its result. ``fingerprint`` covers the source,
    the options, the inputs and the globals' contents: if it differs from the
    stored one, the cell (and its downstream) is stale.
    """

    name: str
    source: str
    outputs: tuple[str, ...]
    inputs: tuple[tuple[str, tuple[str, ...]], ...]
    globals: dict = field(hash=False)
    fingerprint: str = ""


@dataclass(frozen=True)
class CellResult:
    """What a task cell returns (and checkpoints): its outputs and what it printed."""

    values: dict
    stdout: str = ""


@dataclass(frozen=True)
class ModuleRef:
    """A module output travels by name and is imported again where it lands."""

    name: str


def run_cell(spec: CellSpec, *upstream: CellResult) -> CellResult:
    """Body of every task cell: exec the source in a fresh namespace."""
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    namespace.update({k: unpack(v) for k, v in spec.globals.items()})
    for (_, names), result in zip(spec.inputs, upstream):
        namespace.update({n: unpack(result.values[n]) for n in names})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(spec.source, f"<exoflow cell {spec.name}>", "exec"), namespace)
    values = {n: pack(namespace[n]) for n in spec.outputs if n in namespace}
    return CellResult(values, out.getvalue())


def gather(spec: CellSpec, *upstream: CellResult) -> tuple[str, ...]:
    """Root of ``%exoflow run``: waits for every leaf cell; its value stays tiny."""
    return tuple(name for name, _ in spec.inputs)


def pack(value: Any) -> Any:
    return ModuleRef(value.__name__) if isinstance(value, types.ModuleType) else value


def unpack(value: Any) -> Any:
    return importlib.import_module(value.name) if isinstance(value, ModuleRef) else value


_tasks: dict[tuple, Any] = {}


def cell_task(name: str, checkpoint: str | bool = "sync", deterministic: bool = True,
              effect: str | None = None, max_retries: int = 3) -> Any:
    """The engine task for a cell with these options (made once per option set)."""
    key = (name, checkpoint, deterministic, effect, max_retries)
    if key not in _tasks:
        body = gather if name == ALL_CELLS else run_cell
        _tasks[key] = exo.task(body, name=name, checkpoint=checkpoint, deterministic=deterministic,
                               effect=effect, max_retries=max_retries)
    return _tasks[key]


def capture_globals(names: list[str], namespace: dict) -> tuple[dict, list[str]]:
    """The values of ``names`` found in the user's namespace that can travel.

    Modules travel by name. Returns the globals and the names that do not
    pickle (the caller says what to do about them).
    """
    found, broken = {}, []
    for name in names:
        if name not in namespace:
            continue
        value = pack(namespace[name])
        try:
            cloudpickle.dumps(value)
        except Exception:
            broken.append(name)
            continue
        found[name] = value
    return found, broken


def fingerprint(source: str, options: tuple, inputs: tuple, globals_: dict) -> str:
    """A stable digest: the same cell in a new kernel gives the same one."""
    digest = hashlib.sha256(repr((source, options, inputs)).encode())
    for name in sorted(globals_):
        digest.update(name.encode() + b"=" + _value_digest(globals_[name]))
    return digest.hexdigest()[:16]


def _value_digest(value: Any) -> bytes:
    """Functions by their source (their pickles name temporary files), data by its pickle."""
    if isinstance(value, ModuleRef):
        return value.name.encode()
    if inspect.isfunction(value) or inspect.isclass(value):
        try:
            return inspect.getsource(value).encode()
        except (OSError, TypeError):
            return getattr(getattr(value, "__code__", None), "co_code", b"") or repr(value).encode()
    try:
        return hashlib.sha256(cloudpickle.dumps(value)).digest()
    except Exception:
        return repr(type(value)).encode()
