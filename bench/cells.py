"""What a ``%%exoflow task`` cell adds to the same code in a plain cell, in a real Jupyter kernel.

Two cells, each run as a plain cell and as a task cell in the SAME kernel (one
``ipykernel`` started through ``jupyter_client``; Ray started once, by a warm-up
task cell that is not timed):

* ``tiny``: ``x = 1 + 1`` — the fixed cost of going through the engine (DAG,
  lineage rows, a Ray task, the commit, publishing ``x`` back into the namespace,
  the live DAG widget). Target (issue 3): at most 20 ms added.
* ``large``: a cell producing ~500 MB of NumPy data, as ``--checkpoint async``:
  the value comes back through Ray's object store and its checkpoint is written
  off the critical path. Target: at most 1.1x the plain cell.

What is timed is what the user waits for: from the execute request leaving the
client to the kernel's execute reply (the cell's ``[*]`` turning into a number).
Every task-cell sample runs in a fresh workflow (``%exoflow init --workflow
cells-N``, not timed), so no sample reuses another's checkpoint; plain and task
samples alternate so machine noise hits both alike; we report medians.

    python bench/cells.py            # 15 tiny, 3 large samples of each
    python bench/cells.py --quick    # 5 tiny, 1 large (with ~100 MB)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from jupyter_client import KernelManager

from common import add_load_flags, aligned, publish, start, target

ROOT = Path(__file__).resolve().parent.parent
TINY = "x = 1 + 1"
LARGE = "import numpy as np\ndata = np.random.default_rng(0).random({n})"
TARGETS = {"tiny": ("added_ms", 20.0), "large": ("ratio", 1.1)}


class Kernel:
    """One real kernel with the extension loaded; ``run`` times a cell from request to reply."""

    def __init__(self, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "EXOFLOW_STORE"}
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd), env={**env, "PYTHONPATH": str(ROOT)})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self.run("%load_ext jupyter_ext")

    def run(self, code: str, timeout: float = 600) -> float:
        """Seconds from sending ``code`` to its reply; raise if the cell failed."""
        errors: list[str] = []

        def output(msg: dict) -> None:
            if msg["msg_type"] == "error":
                errors.append("\n".join(msg["content"]["traceback"]))
            elif msg["msg_type"] == "stream" and msg["content"]["name"] == "stderr":
                errors.append(msg["content"]["text"])

        started = time.perf_counter()
        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=output)
        elapsed = time.perf_counter() - started
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"cell failed:\n{code}\n{''.join(errors)[-3000:]}")
        return elapsed

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def measure(kernel: Kernel, body: str, options: str, samples: int, first: int) -> tuple[list[float], list[float]]:
    """Alternate plain and task runs of ``body``; each task run in a fresh workflow."""
    plain, task = [], []
    for i in range(first, first + samples):
        plain.append(kernel.run(body))
        kernel.run(f"%exoflow init --workflow cells-{i}")
        task.append(kernel.run(f"%%exoflow task {options}\n{body}"))
        kernel.run("%reset_selective -f ^data$")  # free the previous sample's 500 MB
    return plain, task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few samples, ~100 MB large cell")
    parser.add_argument("--tiny", type=int, help="tiny-cell samples (default 15, quick 5)")
    parser.add_argument("--large", type=int, help="large-cell samples (default 3, quick 1)")
    parser.add_argument("--mb", type=int, help="size of the large cell's array in MB (default 500, quick 100)")
    add_load_flags(parser)
    args = parser.parse_args()
    tiny_n = args.tiny or (5 if args.quick else 15)
    large_n = args.large or (1 if args.quick else 3)
    mb = args.mb or (100 if args.quick else 500)
    meta = {**start(args), "samples": {"tiny": tiny_n, "large": large_n}, "large_mb": mb}

    workdir = Path(tempfile.mkdtemp(prefix="exoflow-bench-cells-"))
    kernel = Kernel(workdir)
    try:
        kernel.run(f"%exoflow init --store {workdir / 'store'} --workflow cells-warmup")
        kernel.run(f"%%exoflow task warm\nwarm = 1")  # starts Ray: set-up, like ray.init
        measure(kernel, TINY, "tiny", 1, 0)  # warm-up: function export, DuckDB caches
        tiny = measure(kernel, TINY, "tiny", tiny_n, 1)
        large_body = LARGE.format(n=mb * 2**20 // 8)
        large = measure(kernel, large_body, "large --checkpoint async", large_n, 1000)
    finally:
        kernel.close()
        shutil.rmtree(workdir, ignore_errors=True)

    rows, figures, targets = [], {}, []
    for name, (plain, task) in (("tiny", tiny), ("large", large)):
        p, t = statistics.median(plain), statistics.median(task)
        figures[name] = {"plain_s": plain, "task_s": task, "plain_median_s": p, "task_median_s": t,
                         "added_ms": (t - p) * 1e3, "ratio": t / p}
        kind, bound = TARGETS[name]
        value = figures[name][kind]
        label = f"{name} ({mb} MB, async)" if name == "large" else f"{name} ({TINY})"
        shown = f"{value:.2f}x" if kind == "ratio" else f"+{value:.1f} ms"
        wanted = f"<= {bound:g}x" if kind == "ratio" else f"<= +{bound:g} ms"
        targets.append(target(f"cells.{name}", "notebook cell", label, shown, wanted, value <= bound))
        rows.append((label, f"{p * 1e3:.1f}", f"{t * 1e3:.1f}", f"{(t - p) * 1e3:+.1f}", f"{t / p:.2f}x",
                     f"{wanted} {'ok' if value <= bound else 'MISS'}"))
    table = aligned(("cell", "plain ms", "task ms", "added ms", "ratio", "target"), rows, left=1)
    publish("cells.json", table, meta, [figures], targets)


if __name__ == "__main__":
    main()
