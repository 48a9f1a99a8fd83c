"""Data movement between two tasks against the disk floor, side by side in one run.

Workload, for each payload size S (default 1 MB, 32 MB, 128 MB):

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

    python bench/dataflow.py                       # 1MB,32MB,128MB, 3 repeats
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

import numpy as np
import ray

import exoflow_kernel as exo
from common import aligned, base_meta, save, wait_for_quiet

MODES = {"exo-sync": "sync", "exo-async": "async", "exo-off": False}
SYSTEMS = ("disk", "ray", *MODES)
TARGET_SIZE = 128 * 2**20
UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}


def make(nbytes: int) -> np.ndarray:
    return np.ones(nbytes, dtype=np.uint8)


def use(a: np.ndarray) -> int:
    return int(a.nbytes)


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
    """Set-up untimed, then one move timed; a wrong size fails loudly."""
    system.prepare(nbytes)
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
    spread_pct: float = 0.0
    mb_per_s: float = 0.0
    bound_ms: float | None = None  # exo-sync only: ray + 1.25 x disk at this size
    passed: bool | None = None     # exo-sync at 128 MB only


def measure(systems: list, sizes: list[int], repeats: int) -> list[Row]:
    rows = {(s.name, n): Row(s.name, n) for n in sizes for s in systems}
    for n in sizes:
        for system in systems:
            time_once(system, n)
    for rep in range(repeats):
        for n in sizes:
            for system in systems:
                rows[system.name, n].seconds.append(time_once(system, n))
        print(f"  repeat {rep + 1}/{repeats} done", flush=True)
    return summarize(list(rows.values()))


def summarize(rows: list[Row]) -> list[Row]:
    for r in rows:
        median = statistics.median(r.seconds)
        r.ms = median * 1e3
        r.spread_pct = (max(r.seconds) - min(r.seconds)) / median * 100
        r.mb_per_s = r.nbytes / 2**20 / median
    by = {(r.system, r.nbytes): r for r in rows}
    for r in rows:
        if r.system == "exo-sync":
            r.bound_ms = by["ray", r.nbytes].ms + 1.25 * by["disk", r.nbytes].ms
            if r.nbytes == TARGET_SIZE:
                r.passed = r.ms <= r.bound_ms
    return rows


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
        body.append((human(r.nbytes), r.system, f"{r.ms:.1f}", f"{r.spread_pct:.0f}%" if len(r.seconds) > 1 else "-", f"{r.mb_per_s:.0f}",
                     f"{r.ms / by['ray', r.nbytes].ms:.2f}x", f"{r.ms / by['disk', r.nbytes].ms:.2f}x",
                     "-" if r.bound_ms is None else f"{r.bound_ms:.1f} ms",
                     "-" if r.passed is None else ("pass" if r.passed else "FAIL")))
    return aligned(head, body)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1MB,32MB,128MB", help="comma list of payload sizes (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per system and size (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1MB,32MB, 1 repeat")
    p.add_argument("--max-load", type=float, default=None,
                   help="wait until the 1-min load average is below this before measuring (bounded by --max-wait)")
    p.add_argument("--max-wait", type=float, default=300, help="longest wait for --max-load, s (default 300)")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.repeats = "1MB,32MB", 1
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    return args


def main() -> None:
    args = parse_args()
    quiet = wait_for_quiet(args.max_load, args.max_wait)
    load_before = os.getloadavg()
    print(f"dataflow: sizes={','.join(human(n) for n in args.sizes)} repeats={args.repeats}", flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="exoflow-bench-") as tmp:
        systems = [Disk(Path(tmp)), PlainRay(), *(ExoFlow(name, Path(tmp)) for name in MODES)]
        rows = measure(systems, args.sizes, args.repeats)
    ray.shutdown()
    meta = {**base_meta(), "sizes": args.sizes, "repeats": args.repeats, "ray": ray.__version__,
            "exoflow": exo.__version__, "numpy": np.__version__, "quiet": quiet, "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(), "filesystem_dir": tempfile.gettempdir()}
    print()
    print(table(rows))
    print(f"\nload average before/after: {load_before[0]:.2f} / {meta['loadavg_after'][0]:.2f} "
          f"on {meta['cpus']} cores (high load or spread: numbers are noisy, run again)")
    path = save("dataflow.json", {"meta": meta, "results": [asdict(r) for r in rows]})
    print(f"raw figures: {path}")


if __name__ == "__main__":
    main()
