"""Data movement between two tasks against the disk floor, side by side in one run.

Workload, for each payload size S (default 1 B, 128 KB, 1 MB, 32 MB, 128 MB):

* ``ray``: ``use.remote(make.remote(S))`` and ``ray.get`` — ``make`` builds a NumPy
  uint8 array of S bytes, ``use`` receives it (through Ray's object store) and returns its
  size. The floor for moving the data without durability.
* ``exo-sync`` / ``exo-async`` / ``exo-off``: the same two functions as ExoFlow tasks with
  that checkpoint mode, ``exo.run(use.bind(make.bind(S)))``, fresh store and workflow id per
  run (opening the store is not timed).
* ``disk``: the floor for the checkpoint: the same S bytes (made once, outside the timing)
  written to a file in the same filesystem as the stores (``/tmp`` here), ``fsync``, then
  ``rename`` — what ``blobs.py`` does per checkpoint, without pickling or checksum.

Every system gets one warm-up run per size, then the repeats go round-robin; medians.
Target from the issue: 128 MB ``exo-sync`` <= ``ray`` + 1.25 x ``disk`` (the bound column
shows the same formula at every size; only 128 MB is the target).

    python bench/dataflow.py                       # 1B,128KB,1MB,32MB,128MB, 3 repeats
    python bench/dataflow.py --sizes 1MB,1GB --repeats 5
    python bench/dataflow.py --quick               # 1MB,32MB, 1 repeat
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ray

import exoflow_kernel as exo
from common import add_load_flags, aligned, pct, publish, ray_up, spread_pct, start, target, verdict
from workloads import make, use

MODES = {"exo-sync": "sync", "exo-async": "async", "exo-off": False}
SYSTEMS = ("disk", "ray", *MODES)
TARGET_SIZE = 128 * 2**20
UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}


class Disk:
    """The floor: the same bytes to a file with fsync and rename (no pickle, no checksum)."""

    name = "disk"

    def __init__(self, tmp_root: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="disk-", dir=tmp_root))
        self.payload: np.ndarray | None = None

    def prepare(self, nbytes: int) -> None:
        if self.payload is None or self.payload.nbytes != nbytes:
            self.payload = make(nbytes)
        for old in self.dir.iterdir():
            old.unlink()

    def move(self, nbytes: int) -> int:
        tmp, final = self.dir / f".{uuid.uuid4().hex}.tmp", self.dir / uuid.uuid4().hex
        with open(tmp, "wb") as f:
            f.write(memoryview(self.payload))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
        return final.stat().st_size


class PlainRay:
    name = "ray"

    def __init__(self) -> None:
        self.make, self.use = ray.remote(make), ray.remote(use)

    def prepare(self, nbytes: int) -> None:
        """Nothing per run."""

    def move(self, nbytes: int) -> int:
        return ray.get(self.use.remote(self.make.remote(nbytes)))


class ExoFlow:
    def __init__(self, name: str, tmp_root: Path) -> None:
        self.name = name
        self.make, self.use = (exo.task(f, checkpoint=MODES[name]) for f in (make, use))
        self.tmp_root = tmp_root
        self.store: Path | None = None

    def prepare(self, nbytes: int) -> None:
        old, self.store = self.store, Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.tmp_root))
        exo.init(self.store)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def move(self, nbytes: int) -> int:
        return exo.run(self.use.bind(self.make.bind(nbytes)), workflow_id=f"{self.name}-{uuid.uuid4().hex[:12]}")


def time_once(system, nbytes: int) -> float:
    """Set-up untimed, then one move timed; a wrong size fails loudly.

    ``os.sync()`` first (untimed): a sample must not pay for the write-back of the bytes
    the previous sample (maybe another system's) left dirty in the page cache, or an
    fsync-ing system is charged for its predecessor's data.
    """
    system.prepare(nbytes)
    os.sync()
    started = time.perf_counter()
    value = system.move(nbytes)
    elapsed = time.perf_counter() - started
    if value != nbytes:
        raise AssertionError(f"{system.name} moved {value!r} bytes, expected {nbytes}")
    return elapsed


@dataclass
class Row:
    system: str
    nbytes: int
    seconds: list[float] = field(default_factory=list)
    ms: float = 0.0
    mb_per_s: float = 0.0
    spread_pct: float | None = None
    bound_ms: float | None = None  # exo-sync only: ray + 1.25 x disk at this size
    passed: bool | None = None     # exo-sync at 128 MB only


def measure(systems: list, sizes: list[int], repeats: int, row: type = Row) -> list:
    """One warm-up per system and size, then the repeats round-robin; raw samples in ``row``s."""
    rows = {(s.name, n): row(s.name, n) for n in sizes for s in systems}
    for n in sizes:
        for system in systems:
            time_once(system, n)
    for rep in range(repeats):
        for n in sizes:
            for system in systems:
                rows[system.name, n].seconds.append(time_once(system, n))
        print(f"  repeat {rep + 1}/{repeats} done", flush=True)
    return list(rows.values())


def summarize(rows: list[Row]) -> list[Row]:
    for r in rows:
        median = statistics.median(r.seconds)
        r.ms = median * 1e3
        r.spread_pct = spread_pct(r.seconds)
        r.mb_per_s = r.nbytes / 2**20 / median
    by = {(r.system, r.nbytes): r for r in rows}
    for r in rows:
        if r.system == "exo-sync":
            r.bound_ms = by["ray", r.nbytes].ms + 1.25 * by["disk", r.nbytes].ms
            if r.nbytes == TARGET_SIZE:
                r.passed = r.ms <= r.bound_ms
    return rows


def targets(rows: list[Row]) -> list[dict]:
    return [target("dataflow.128MB.exo-sync", "data movement 128 MB", "exo-sync vs plain Ray + 1.25 x disk",
                   f"{r.ms:.0f} ms vs {r.bound_ms:.0f} ms", "<= ray + 1.25 x disk", r.passed)
            for r in rows if r.passed is not None]


def human(nbytes: int) -> str:
    for unit in ("GB", "MB", "KB"):
        if nbytes >= UNITS[unit] and nbytes % UNITS[unit] == 0:
            return f"{nbytes // UNITS[unit]} {unit}"
    return f"{nbytes} B"


def parse_size(text: str) -> int:
    text = text.strip().upper()
    for unit in ("GB", "MB", "KB", "B"):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * UNITS[unit])
    return int(text)


def table(rows: list[Row]) -> str:
    by = {(r.system, r.nbytes): r for r in rows}
    head = ("size", "system", "ms", "spread", "MB/s", "x ray", "x disk", "ray+1.25*disk", "result")
    body = []
    for r in sorted(rows, key=lambda r: (r.nbytes, SYSTEMS.index(r.system))):
        body.append((human(r.nbytes), r.system, f"{r.ms:.1f}", pct(r.spread_pct), f"{r.mb_per_s:.0f}",
                     f"{r.ms / by['ray', r.nbytes].ms:.2f}x", f"{r.ms / by['disk', r.nbytes].ms:.2f}x",
                     "-" if r.bound_ms is None else f"{r.bound_ms:.1f} ms",
                     verdict(r.passed)))
    return aligned(head, body)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1B,128KB,1MB,32MB,128MB",
                   help="comma list of payload sizes (default %(default)s: the ExoFlow paper's Figure 8a)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per system and size (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1MB,32MB, 1 repeat")
    add_load_flags(p)
    args = p.parse_args()
    if args.quick:
        args.sizes, args.repeats = "1MB,32MB", 1
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    return args


def in_session(work: Callable[[Path], list]) -> list:
    """``work(tmp)`` with our own local Ray up and a temp folder (in the stores' filesystem)
    for the stores and files, both gone after."""
    ray_up()
    with tempfile.TemporaryDirectory(prefix="exoflow-bench-") as tmp:
        rows = work(Path(tmp))
    ray.shutdown()
    return rows


def versions() -> dict:
    return {"ray": ray.__version__, "exoflow": exo.__version__, "numpy": np.__version__,
            "filesystem_dir": tempfile.gettempdir()}


def main() -> None:
    args = parse_args()
    meta = start(args)
    print(f"dataflow: sizes={','.join(human(n) for n in args.sizes)} repeats={args.repeats}", flush=True)
    rows = summarize(in_session(lambda tmp: measure([Disk(tmp), PlainRay(), *(ExoFlow(name, tmp) for name in MODES)],
                                                    args.sizes, args.repeats)))
    meta.update(sizes=args.sizes, repeats=args.repeats, **versions())
    publish("dataflow.json", table(rows), meta, [asdict(r) for r in rows], targets(rows))


if __name__ == "__main__":
    main()
