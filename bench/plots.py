"""PNG plots of the benchmark results (``results/*.json`` -> ``results/*.png``).

One picture per results file that exists: ``overhead.png`` (µs per task, each system, chain
and fan-out), ``dataflow.png`` (time to move S bytes between two tasks against
the disk floor and the ``ray + 1.25 x disk`` bound), ``checkpoint.png`` (checkpoint
bandwidth against the disk floor and its 80 % line), ``recovery.png`` (resume to result per
system and shape, against N when several sizes ran), ``scale.png`` (``exoflow status``
latency against the 200 ms line, with the lineage size). Each title carries the load average
the figures were measured under. Needs matplotlib (``pip install -e .[bench]``).

    python bench/plots.py              # every plot whose JSON exists
    python bench/plots.py --only checkpoint,scale
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from common import RESULTS_DIR  # noqa: E402

COLORS = {"ray": "#7f7f7f", "disk": "#7f7f7f", "blobs": "#17becf", "exo-sync": "#1f77b4", "exo-async": "#2ca02c",
          "exo-off": "#bcbd22", "ray-workflows": "#d62728", "dbos": "#9467bd", "exoflow": "#1f77b4"}


def _title(ax, text: str, meta: dict) -> None:
    before, after = meta.get("loadavg_before", [0]), meta.get("loadavg_after", [0])
    ax.set_title(f"{text}\n{meta.get('when', '?')[:16]}, load {before[0]:.1f}->{after[0]:.1f} on "
                 f"{meta.get('cpus', '?')} cores, rev {meta.get('revision', '?')}", fontsize=9)


def _save(fig, name: str, out: Path) -> Path:
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def overhead(data: dict, out: Path) -> Path:
    rows = data["results"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, workload in zip(axes, ("chain", "fanout")):
        mine = sorted((r for r in rows if r["workload"] == workload), key=lambda r: list(COLORS).index(r["system"])
                      if r["system"] in COLORS else 99)
        ax.bar([r["system"] for r in mine], [r["us_per_task"] for r in mine],
               color=[COLORS.get(r["system"], "#333") for r in mine])
        for i, r in enumerate(mine):
            ax.text(i, r["us_per_task"], f"{r['us_per_task']:.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_ylabel("µs per task (DBOS fan-out: per child workflow)")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        _title(ax, f"{workload}, N={mine[0]['n'] if mine else '?'}", data["meta"])
    return _save(fig, "overhead.png", out)


def dataflow(data: dict, out: Path) -> Path:
    rows = data["results"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["nbytes"])
        ax.plot([r["nbytes"] / 2**20 for r in mine], [r["ms"] for r in mine], "o-", label=system,
                color=COLORS.get(system))
    bound = sorted((r for r in rows if r.get("bound_ms")), key=lambda r: r["nbytes"])
    if bound:
        ax.plot([r["nbytes"] / 2**20 for r in bound], [r["bound_ms"] for r in bound], "k--", lw=1,
                label="ray + 1.25 x disk")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("payload (MB, log)")
    ax.set_ylabel("ms to move it (log)")
    ax.legend(fontsize=8)
    _title(ax, "data movement between two tasks", data["meta"])
    return _save(fig, "dataflow.png", out)


def checkpoint(data: dict, out: Path) -> Path:
    rows = [r for r in data["results"] if r.get("ckpt_mb_per_s")]
    disk = next(r for r in data["results"] if r["system"] == "disk")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([r["system"] for r in rows], [r["ckpt_mb_per_s"] for r in rows],
           color=[COLORS.get(r["system"], "#333") for r in rows])
    for i, r in enumerate(rows):
        ax.text(i, r["ckpt_mb_per_s"], f"{r['of_disk']:.0%}", ha="center", va="bottom", fontsize=8)
    ax.axhline(0.8 * disk["mb_per_s"], color="k", ls="--", lw=1, label="80 % of the disk floor (target)")
    ax.set_ylabel("checkpoint MB/s")
    ax.legend(fontsize=8)
    _title(ax, f"checkpoint of a {disk['nbytes'] / 2**30:g} GB NumPy array", data["meta"])
    return _save(fig, "checkpoint.png", out)


def recovery(data: dict, out: Path) -> Path:
    rows = data["results"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, shape in zip(axes, ("chain", "fanout")):
        mine = [r for r in rows if r["shape"] == shape]
        for system in dict.fromkeys(r["system"] for r in mine):
            pts = sorted((r for r in mine if r["system"] == system), key=lambda r: r["n"])
            ax.plot([r["n"] for r in pts], [r["resume_s"] for r in pts], "o-", label=system, color=COLORS.get(system))
        ns = sorted({r["n"] for r in mine})
        if 1000 in ns:
            ax.plot([1000], [1.0], "k*", ms=10, label="target: 1 s at N=1000")
        if len(ns) > 1:
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("tasks (killed at 90 %)")
        ax.set_ylabel("resume to result, s")
        ax.legend(fontsize=7)
        _title(ax, f"recovery, {shape}", data["meta"])
    return _save(fig, "recovery.png", out)


def scale(data: dict, out: Path) -> Path:
    res = data["results"][0]
    probes = [p for p in res["probes"] if p["median_ms"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{p['how']}\n{p['situation']}" for p in probes]
    ax.bar(labels, [p["median_ms"] for p in probes], color=["#1f77b4" if p["how"] == "command" else "#17becf"
                                                             for p in probes])
    for i, p in enumerate(probes):
        ax.text(i, p["median_ms"], f"{p['median_ms']:.0f} ms", ha="center", va="bottom", fontsize=8)
    ax.axhline(200, color="k", ls="--", lw=1, label="target: 200 ms")
    ax.set_ylabel("`exoflow status`, ms (median)")
    ax.legend(fontsize=8)
    _title(ax, f"{res['tasks']} tasks: store {res['store_bytes'] / 2**20:.1f} MB, run {res['run_s']:.0f} s",
           data["meta"])
    return _save(fig, "scale.png", out)


PLOTS = {"overhead": overhead, "dataflow": dataflow, "checkpoint": checkpoint, "recovery": recovery, "scale": scale}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PLOTS), help="comma list of %(default)s")
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = p.parse_args()
    for name in args.only.split(","):
        path = args.results / f"{name}.json"
        data = json.loads(path.read_text()) if path.exists() else None
        if not data or not data.get("results"):
            print(f"plots: no {name}.json yet, skipped")
            continue
        print(f"plots: {PLOTS[name](data, args.results)}")


if __name__ == "__main__":
    main()
