"""Helpers of the "ETL into DuckDB" notebook (notebooks/etl_duckdb.ipynb).

* the data: :func:`generate` writes ``ROWS`` synthetic orders as ``PARTITIONS`` Parquet files
  (numpy, fixed seed: the same bytes on every machine), :func:`clean` transforms one
  partition, :func:`daily_revenue` aggregates the cleaned partitions;
* the same pipeline as plain ``@exo.task`` functions (:func:`build`), which a *driver*
  process runs on its own store: ``python etl_support.py --work DIR`` (:func:`main`);
* crashing that driver on purpose (:func:`start_driver`, :func:`wait_for`,
  :func:`crash`): its whole process tree, the local Ray it started included, gets SIGKILL.

Three environment variables change only *when* things happen, never what they compute:
``ETL_SLOW_SECONDS`` (each partition takes at least that long: the headless demo uses it
to have time to kill a kernel mid-cell) and ``ETL_HOLD_PARTS`` (e.g. ``2,3``: those
partitions wait until their process is killed, so the notebook's crash lands at the same
point on every run). ``ETL_TRACE_DIR``: each call of :func:`clean` appends a line to
``ETL_TRACE_DIR/clean.log``, so a demo can count real executions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import exoflow_kernel as exo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "demo"))
from proctree import all_dead, kill_tree  # noqa: E402  (shared with the demos)

ROWS = 1_000_000
PARTITIONS = 4
SEED = 42
REGIONS = ["eu", "us", "apac", "latam", "mea", "nordics", "uk", "japan"]
STATUSES = ["paid", "cancelled", "pending"]
WORKFLOW_ID = "etl"

# -- the data and the transforms (plain functions: the notebook's cells and the driver use them) --


def generate(data_dir: str | os.PathLike, rows: int = ROWS, partitions: int = PARTITIONS,
             seed: int = SEED) -> list[str]:
    """Write ``rows`` orders as ``partitions`` Parquet files; return their paths.

    Every partition has its own seeded generator, so its content does not depend on the
    machine, the process or the order in which partitions are made. About 90% of the orders
    are paid, some are cancelled or pending, about 1% have a non-positive amount.
    """
    out = Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    per = -(-rows // partitions)
    paths = []
    for p in range(partitions):
        lo, hi = p * per, min(rows, (p + 1) * per)
        n = hi - lo
        rng = np.random.default_rng([seed, p])
        status = np.searchsorted([90, 96], rng.integers(0, 100, n), side="right").astype(np.int8)
        table = pa.table({
            "order_id": np.arange(lo, hi, dtype=np.int64),
            "customer_id": rng.integers(1, 50_000, n, dtype=np.int32),
            "region": pa.DictionaryArray.from_arrays(rng.integers(0, len(REGIONS), n, dtype=np.int8), REGIONS),
            "status": pa.DictionaryArray.from_arrays(status, STATUSES),
            "amount_cents": rng.integers(-500, 50_000, n, dtype=np.int64),
            "day": np.datetime64("2025-01-01") + rng.integers(0, 90, n, dtype=np.int16).astype("timedelta64[D]"),
        })
        path = out / f"orders-{p}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)  # a crash never leaves half a file under the real name
        paths.append(str(path))
    return paths


def clean(path: str) -> pa.Table:
    """One partition: keep paid orders with a positive amount; plain column types."""
    _pace(path)
    t = pq.read_table(path)
    t = t.filter(pc.and_(pc.equal(t["status"].cast(pa.string()), "paid"), pc.greater(t["amount_cents"], 0)))
    return pa.table({
        "order_id": t["order_id"],
        "customer_id": t["customer_id"],
        "region": t["region"].cast(pa.string()),
        "day": t["day"].cast(pa.date32()),
        "amount_cents": t["amount_cents"],
    })


def daily_revenue(*parts: pa.Table) -> pa.Table:
    """Revenue and order count per region and day, over every cleaned partition."""
    t = pa.concat_tables(parts)
    agg = t.group_by(["region", "day"]).aggregate([("amount_cents", "sum"), ("order_id", "count")])
    agg = agg.rename_columns({"amount_cents_sum": "revenue_cents", "order_id_count": "orders"})
    return agg.sort_by([("region", "ascending"), ("day", "ascending")])


def expected_sql(data_dir: str | os.PathLike) -> str:
    """The number of rows the load must produce, computed straight from the raw Parquet."""
    files = str(Path(data_dir) / "orders-*.parquet")
    return f"select count(*) from read_parquet('{files}') where status = 'paid' and amount_cents > 0"


def _pace(path: str) -> None:
    """Slow a partition down or hold it, and trace the call (see the module docstring);
    no effect by default."""
    part = Path(path).stem.rsplit("-", 1)[-1]
    if os.environ.get("ETL_TRACE_DIR"):
        with open(os.path.join(os.environ["ETL_TRACE_DIR"], "clean.log"), "a") as f:
            f.write(f"{part} {os.getpid()} {time.time():.3f}\n")
    if part in os.environ.get("ETL_HOLD_PARTS", "").split(","):
        time.sleep(600)  # until this process is killed
    time.sleep(float(os.environ.get("ETL_SLOW_SECONDS", "0") or 0))


# -- the same workflow as plain tasks: what the driver process runs ----------------------------


@exo.task(name="raw")
def extract(data_dir: str) -> list[str]:
    return generate(data_dir)


@exo.task(effect="transactional", num_cpus=0.5)  # half a CPU: all partitions at once, even on 2 cores
def load_part(paths: list[str], p: int) -> pa.Table:
    orders = clean(paths[p])
    exo.context().write("orders", orders)
    return orders


@exo.task(name="daily", effect="transactional")
def load_daily(*parts: pa.Table) -> dict:
    table = daily_revenue(*parts)
    exo.context().write("daily_revenue", table)
    return {"orders": sum(t.num_rows for t in parts), "daily_rows": table.num_rows}


def build(data_dir: str | os.PathLike):
    """raw -> part_0 .. part_N (each a transactional load into ``orders``) -> daily."""
    raw = extract.bind(str(data_dir))
    parts = [load_part.options(name=f"part_{p}").bind(raw, p) for p in range(PARTITIONS)]
    return load_daily.bind(*parts)


# -- the driver and its crash -----------------------------------------------------------------


def start_driver(work: str | os.PathLike, hold: str = "2,3") -> subprocess.Popen:
    """Start ``python etl_support.py --work WORK`` (store in WORK/store, data in WORK/data).

    The partitions in ``hold`` wait until the driver is killed. Its output goes to WORK/driver.log.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("EXOFLOW_STORE", "ETL_SLOW_SECONDS")}
    env["ETL_HOLD_PARTS"] = hold
    with open(work / "driver.log", "w") as log:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--work", str(work)], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(HERE))


def progress(work: str | os.PathLike) -> dict[str, str]:
    """Task states as the driver last reported them (it writes WORK/progress.json)."""
    try:
        return json.loads((Path(work) / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_for(work: str | os.PathLike, proc: subprocess.Popen, wanted: dict[str, str],
             timeout: float = 300) -> dict[str, str]:
    """Wait until the driver reports the ``wanted`` state of each task; return all states."""
    deadline = time.monotonic() + timeout
    while True:
        states = progress(work)
        if all(states.get(t) == s for t, s in wanted.items()):
            return states
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                crash(proc)
            log = (Path(work) / "driver.log").read_text()[-3000:]
            raise RuntimeError(f"the driver never reached {wanted} (exit code {proc.returncode}); its log:\n{log}")
        time.sleep(0.05)


def crash(proc: subprocess.Popen) -> list[int]:
    """kill -9 the driver and every process under it (its Ray); return their pids, all dead."""
    killed = [int(n.split(":")[0]) for n in kill_tree(proc.pid)]
    proc.wait()
    assert all_dead(killed)
    return killed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the ETL workflow as a driver process (it may be killed).")
    ap.add_argument("--work", required=True, help="folder: WORK/store, WORK/data, WORK/progress.json")
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    exo.init(work / "store")
    future = exo.run_async(build(work / "data"), workflow_id=WORKFLOW_ID)
    print(f"[driver pid {os.getpid()}] running {WORKFLOW_ID!r} on {work / 'store'}", flush=True)
    last: dict[str, str] = {}
    while True:  # report task states (an owner may ask its own store while it runs)
        done = future.done()
        states = {r.task_id: r.state for r in exo.lineage(WORKFLOW_ID)}
        if states != last:
            tmp = work / "progress.json.tmp"
            tmp.write_text(json.dumps(states))
            os.replace(tmp, work / "progress.json")
            print(f"[driver] {states}", flush=True)
            last = states
        if done:
            break
        time.sleep(0.05)
    print(f"[driver] finished without being killed: {future.result()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
