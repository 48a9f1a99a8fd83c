"""ONE table of every ratio and target of the benchmarks issue (#5), pass or miss, from the
JSON files under ``results/`` (what ``make bench`` ends with).

Every benchmark script saves the targets it checked in its JSON (key ``targets``: id,
workload, measure, figure, target, passed; see ``common.target``); this script gathers them
from every ``results/*.json``, in the issue's order, with the load average each script ran
under and when. A target of the issue that no results file carries is listed as "not
measured", so a gap shows. Another workload joins by writing its targets the same way with
one of the ids below (or a new id: it is listed after the known ones).

    python bench/report.py            # the table
    python bench/report.py --strict   # ... and exit 1 if a target is missed or not measured
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import RESULTS_DIR, aligned, verdict

# The issue's targets, in its order: id -> (workload, what, target) for the "not measured" rows.
ISSUE: dict[str, tuple[str, str, str]] = {}
for _shape in ("fanout", "chain"):
    for _mode, _bound in (("exo-sync", "1.3" if _shape == "fanout" else "1.5"), ("exo-async", "1.2"), ("exo-off", "1.1")):
        ISSUE[f"overhead.{_shape}.{_mode}.ray"] = (f"overhead {_shape}", f"{_mode} / plain Ray", f"<= {_bound}x")
    ISSUE[f"overhead.{_shape}.exo-sync.ray-workflows"] = (f"overhead {_shape}", "ray-workflows / exo-sync", ">=10x")
    ISSUE[f"overhead.{_shape}.exo-sync.dbos"] = (f"overhead {_shape}", "dbos / exo-sync", ">1x")
ISSUE.update({
    "dataflow.128MB.exo-sync": ("data movement 128 MB", "exo-sync vs plain Ray + 1.25 x disk", "<= ray + 1.25 x disk"),
    "checkpoint.exo-sync": ("checkpoint 1 GB", "exo-sync checkpoint bandwidth / disk", ">= 80%"),
    "recovery.chain.1000": ("recovery chain 1000", "resume to result, once Ray is up", "<= 1 s"),
    "recovery.fanout.1000": ("recovery fanout 1000", "resume to result, once Ray is up", "<= 1 s"),
    "recovery.chain.growth": ("recovery chain 1k -> 10k", "resume growth", "linear"),
    "recovery.fanout.growth": ("recovery fanout 1k -> 10k", "resume growth", "linear"),
    "scale.completes": ("scale 100k tasks", "completes", "SUCCESSFUL"),
    "scale.lineage": ("scale 100k tasks", "lineage on disk", "<= 100 MB"),
    "scale.status.closed": ("scale 100k tasks", "`exoflow status`, store closed", "<= 200 ms"),
    "scale.status.live": ("scale 100k tasks", "`exoflow status`, workflow live", "<= 200 ms"),
    "ml.selective.nofail": ("ML pipeline", "Selective AsyncCkpt / NoCkpt, no failure", "<= 1.1x"),
    "ml.selective.crash": ("ML pipeline", "Selective AsyncCkpt with crash / NoCkpt with crash", "<= 0.6x"),
})


def results_files(results: Path):
    """(path, meta, targets) of every readable results file."""
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict):
            yield path, data.get("meta") or {}, data.get("targets") or []


def gather(results: Path) -> list[dict]:
    """Every target saved under ``results``, each with its file, load and time."""
    found = []
    for path, meta, targets in results_files(results):
        before, after = meta.get("loadavg_before"), meta.get("loadavg_after")
        load = f"{before[0]:.1f}->{after[0]:.1f}" if before and after else "?"
        found += [{**t, "file": path.name, "load": load, "when": str(meta.get("when", "?"))[:16]} for t in targets]
    return found


def ordered(found: list[dict]) -> list[dict]:
    """The issue's order; a target measured twice (two files) shows each; unknown ids last."""
    by_id: dict[str, list[dict]] = {}
    for t in found:
        by_id.setdefault(t["id"], []).append(t)
    rows = []
    for id_, (workload, measure, bound) in ISSUE.items():
        rows += by_id.pop(id_, [{"id": id_, "workload": workload, "measure": measure, "figure": "not measured",
                                 "target": bound, "passed": None, "file": "-", "load": "-", "when": "-"}])
    for extra in by_id.values():
        rows += extra
    return rows


def table(rows: list[dict]) -> str:
    head = ("workload", "measure", "figure", "target", "result", "load", "when", "from")
    body = [(r["workload"], r["measure"], r["figure"], r["target"],
             "not run" if r["file"] == "-" else verdict(r["passed"]), r["load"], r["when"], r["file"]) for r in rows]
    return aligned(head, body, left=2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of the JSON files (default bench/results)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any target is missed or not measured")
    args = p.parse_args()
    rows = ordered(gather(args.results))
    print(table(rows))
    judged = [r for r in rows if r["passed"] is not None]  # info rows (no target) are not counted
    passed = sum(1 for r in judged if r["passed"])
    unmeasured = sum(1 for r in rows if r["file"] == "-")
    print(f"\n{passed} of {len(judged) + unmeasured} targets pass, {len(judged) - passed} missed, {unmeasured} not measured"
          f" (load: 1-min load average before->after each script, on {_cpus(args.results)} cores)")
    if args.strict and passed < len(judged) + unmeasured:
        sys.exit(1)


def _cpus(results: Path) -> str:
    return next((str(meta["cpus"]) for _, meta, _ in results_files(results) if "cpus" in meta), "?")


if __name__ == "__main__":
    main()
