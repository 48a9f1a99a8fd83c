"""Workload 7: the ExoFlow paper's stateful-serverless travel reservation, scaled down.

One reservation = reserve a hotel room, reserve a flight seat, charge the card: three calls
to three local HTTP services that dedupe by ``Idempotency-Key`` (``notebooks/travel_services.py``,
started once in their own process and shared by every system, so every system calls the
same servers with the same latency). Each call is a durable, idempotent step.

Systems (the same workflow, the same services, the same trips):

* ``exoflow-serial``   hotel -> flight -> charge, sync checkpoints;
* ``exoflow-parallel`` hotel and flight at once, then charge, sync checkpoints;
* ``exoflow-async``    parallel with ``checkpoint="async"`` (checkpoints off the critical path);
* ``dbos-serial``      DBOS Transact (SQLite system database): one ``@DBOS.workflow`` of three
  ``@DBOS.step`` calls, in ``bench/.venv-dbos``; its steps' key is ``<workflow id>:<step>``;
* ``dbos-parallel``    hotel and flight as two child workflows started at once, then the charge.

Load: open loop at fixed request rates. Reservation i is *scheduled* at ``t0 + i / rate`` and
started then (``exo.run_async`` / ``DBOS.start_workflow``); its latency is its finish time
minus its scheduled time (so a system that falls behind pays for its queue), throughput is
completed reservations / (last finish - first scheduled). Every reservation gets a fresh
workflow id and trip. A warm-up round per system is not timed. After every round the
services' ledgers must show exactly one room, seat and charge per trip (checked, reported).
Repeats run round-robin; the table shows medians over repeats.

    python3 bench/reservation.py --quick      # ~1 minute on a quiet machine: rates 2 and 5/s, 4 s each, 1 repeat
    python3 bench/reservation.py              # rates 2, 5, 10, 20/s, 15 s each, 3 repeats

Writes ``bench/results/reservation.json`` (``common.publish``). DBOS runs BEFORE our Ray
starts (two busy runtimes on 2 cores would slow each other).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "notebooks")]

import travel_services as ts  # noqa: E402  (stdlib only: this file also runs in the DBOS venv)

OURS = {"exoflow-serial": "serial", "exoflow-parallel": "parallel", "exoflow-async": "async"}
DBOS = {"dbos-serial": "serial", "dbos-parallel": "parallel"}


def trips(system: str, rate: float, n: int, tag: str) -> list[dict]:
    """Fresh trips (fresh keys at the services) with the prices of ``ts.trip``."""
    return [{**ts.trip(i), "trip": f"{system}-{rate:g}-{tag}-{i}"} for i in range(n)]


def open_loop(start_one, plan: list[dict], rate: float, timeout_s: float) -> dict:
    """Start ``plan[i]`` at t0 + i/rate with ``start_one(trip, done)``; ``done()`` is called when it ends."""
    finished: dict[int, float] = {}
    failed: list[str] = []
    bad: set[int] = set()
    lock = threading.Lock()
    all_done = threading.Event()
    t0 = time.perf_counter() + 0.05

    def done_for(i: int):
        def done(error: BaseException | None = None) -> None:
            with lock:
                finished[i] = time.perf_counter()
                if error is not None:
                    failed.append(f"{type(error).__name__}: {error}")
                    bad.add(i)
                if len(finished) == len(plan):
                    all_done.set()
        return done

    for i, t in enumerate(plan):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start_one(t, done_for(i))
    all_done.wait(timeout_s)
    with lock:
        ok = {i: t for i, t in finished.items() if i not in bad}  # latency and throughput of successes only
        lat = sorted(t - (t0 + i / rate) for i, t in ok.items())
        last = max(ok.values()) if ok else t0
    n = len(lat)
    return {"rate": rate, "scheduled": len(plan), "completed": n, "failed": failed[:3], "n_failed": len(failed),
            "throughput_per_s": n / (last - t0) if n else 0.0,
            "p50_ms": 1000 * lat[n // 2] if n else None,
            "p99_ms": 1000 * lat[min(n - 1, int(round(0.99 * (n - 1))))] if n else None}


def check_ledger(services: ts.TravelServices, before: dict, n: int) -> bool:
    """Exactly one room, seat and charge per new trip; no double booking or key conflict."""
    after = services.ledger()
    return all(after[k]["applied"] - before[k]["applied"] == n and after[k]["trips"] - before[k]["trips"] == n
               and not after[k]["double"] and not after[k]["conflicts"] for k in ts.KINDS)


# -- ExoFlow ---------------------------------------------------------------------------------


def measure_ours(modes: list[str], urls: dict, rates: list[float], seconds: float, repeats: int,
                 services: ts.TravelServices) -> list[dict]:
    import exoflow_kernel as exo

    import ray

    for attempt in range(3):  # Ray gives up after 30 s on a very busy machine: try again
        try:
            ray.init(address="local", include_dashboard=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    store = tempfile.mkdtemp(prefix="exoflow-bench-reservation-")
    exo.init(store)

    def start_one(mode: str):
        def start(t: dict, done) -> None:
            future = exo.run_async(ts.reservation(t, urls, OURS[mode]), workflow_id=f"r-{uuid.uuid4().hex[:12]}")
            future.add_done_callback(lambda f: done(f.exception()))
        return start

    for mode in modes:  # warm-up: Ray workers, imports, DuckDB
        open_loop(start_one(mode), trips(mode, 0, 4, "warm"), 5.0, 120)
    rows = []
    for rep in range(repeats):
        for rate in rates:
            for mode in modes:
                n = max(1, int(rate * seconds))
                before = services.ledger()
                out = open_loop(start_one(mode), trips(mode, rate, n, f"r{rep}"), rate, seconds + 120)
                out.update(system=mode, repeat=rep, ledger_ok=check_ledger(services, before, out["completed"]))
                print(f"  {mode:17} {rate:>5g}/s  p50 {out['p50_ms'] or 0:8.1f} ms  p99 {out['p99_ms'] or 0:8.1f} ms  "
                      f"{out['throughput_per_s']:6.2f}/s", flush=True)
                rows.append(out)
    exo.close()
    return rows


# -- DBOS (this file, run by bench/.venv-dbos's python with --dbos-worker) ------------------------


def dbos_worker(args: argparse.Namespace) -> None:
    import logging

    from dbos import DBOS as dbos, SetWorkflowID

    urls = json.loads(args.urls)
    tmp = Path(tempfile.mkdtemp(prefix="dbos-bench-reservation-"))
    dbos(config={"name": "reservation-bench", "system_database_url": f"sqlite:///{tmp / 'dbos.sqlite'}",
                 "log_level": "WARNING"})

    @dbos.step()
    def book(kind: str, t: dict) -> dict:
        return ts.post(urls[kind], f"{dbos.workflow_id}:{kind}", {"trip": t["trip"], "amount": t[kind]})

    @dbos.step()
    def pay(t: dict, hotel: dict, flight: dict) -> dict:
        return ts.post(urls["payment"], f"{dbos.workflow_id}:payment",
                       {"trip": t["trip"], "amount": hotel["amount"] + flight["amount"]})

    @dbos.workflow()
    def book_wf(kind: str, t: dict) -> dict:
        return book(kind, t)

    @dbos.workflow()
    def serial_wf(t: dict) -> dict:
        hotel = book("hotel", t)
        flight = book("flight", t)
        return pay(t, hotel, flight)

    @dbos.workflow()
    def parallel_wf(t: dict) -> dict:
        handles = [dbos.start_workflow(book_wf, kind, t) for kind in ("hotel", "flight")]
        hotel, flight = (h.get_result() for h in handles)
        return pay(t, hotel, flight)

    dbos.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    shapes = {"dbos-serial": serial_wf, "dbos-parallel": parallel_wf}
    systems = args.systems.split(",")

    def start_one(system: str):
        def start(t: dict, done) -> None:
            with SetWorkflowID(f"r-{uuid.uuid4().hex[:12]}"):
                handle = dbos.start_workflow(shapes[system], t)

            def wait() -> None:
                try:
                    handle.get_result()
                    done()
                except BaseException as exc:  # counted as failed
                    done(exc)
            threading.Thread(target=wait, daemon=True).start()
        return start

    rates = [float(r) for r in args.rates.split(",")]
    for system in systems:
        open_loop(start_one(system), trips(system, 0, 4, "warm"), 5.0, 120)
    rows = []
    for rep in range(args.repeats):
        for rate in rates:
            for system in systems:
                n = max(1, int(rate * args.seconds))
                before = {k: ts.get_json(u) for k, u in urls.items()}
                out = open_loop(start_one(system), trips(system, rate, n, f"r{rep}"), rate, args.seconds + 120)
                after = {k: ts.get_json(u) for k, u in urls.items()}
                out.update(system=system, repeat=rep, ledger_ok=all(
                    after[k]["applied"] - before[k]["applied"] == out["completed"] and not after[k]["double"]
                    and not after[k]["conflicts"] for k in ts.KINDS))
                print(f"  {system:17} {rate:>5g}/s  p50 {out['p50_ms'] or 0:8.1f} ms  p99 {out['p99_ms'] or 0:8.1f} ms  "
                      f"{out['throughput_per_s']:6.2f}/s", file=sys.stderr, flush=True)
                rows.append(out)
    import dbos as dbos_pkg
    from importlib.metadata import version

    print(json.dumps({"rows": rows, "meta": {"dbos": version("dbos"), "python": sys.version.split()[0],
                                            "system_database": "sqlite"}}))
    dbos.destroy()
    del dbos_pkg


def measure_dbos(systems: list[str], urls: dict, rates: list[float], seconds: float, repeats: int) -> tuple[list, dict]:
    from baselines import setup as baselines

    python = baselines.ensure("dbos")
    cmd = [str(python), __file__, "--dbos-worker", "--urls", json.dumps(urls), "--systems", ",".join(systems),
           "--rates", ",".join(f"{r:g}" for r in rates), "--seconds", str(seconds), "--repeats", str(repeats)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the DBOS baseline failed ({done.returncode})")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["rows"], out["meta"]


# -- main ----------------------------------------------------------------------------------------


def summarize(rows: list[dict]) -> list[dict]:
    """Median over repeats per (system, rate)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["system"], r["rate"]), []).append(r)
    out = []
    for (system, rate), rs in groups.items():
        def med(key: str):
            vals = [r[key] for r in rs if r[key] is not None]
            return statistics.median(vals) if vals else None
        out.append({"system": system, "rate": rate, "repeats": len(rs), "throughput_per_s": med("throughput_per_s"),
                    "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
                    "completed": sum(r["completed"] for r in rs), "scheduled": sum(r["scheduled"] for r in rs),
                    "ledger_ok": all(r["ledger_ok"] for r in rs)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~1 minute on a quiet machine: rates 2,5/s for 4 s, 1 repeat")
    p.add_argument("--rates", help="requests per second, comma-separated (default 2,5,10,20)")
    p.add_argument("--seconds", type=float, help="length of each open-loop round, s (default 15)")
    p.add_argument("--repeats", type=int, help="rounds per (system, rate) (default 3)")
    p.add_argument("--latency-ms", type=float, default=2.0, help="service time of every HTTP call (default 2 ms)")
    p.add_argument("--systems", default=",".join([*OURS, *DBOS]))
    p.add_argument("--dbos-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--urls", help=argparse.SUPPRESS)
    from common import add_load_flags

    add_load_flags(p)
    args = p.parse_args()
    if args.dbos_worker:
        return dbos_worker(args)

    from common import aligned, publish, start

    rates = [float(r) for r in (args.rates or ("2,5" if args.quick else "2,5,10,20")).split(",")]
    seconds = args.seconds or (4.0 if args.quick else 15.0)
    repeats = args.repeats or (1 if args.quick else 3)
    systems = args.systems.split(",")
    meta = start(args)
    meta.update(rates=rates, seconds=seconds, repeats=repeats, service_latency_ms=args.latency_ms,
                quick=args.quick)
    services = ts.TravelServices.spawn(args.latency_ms / 1000)
    rows: list[dict] = []
    try:
        dbos_systems = [s for s in systems if s in DBOS]
        if dbos_systems:  # before our Ray starts
            print("DBOS (bench/.venv-dbos):", flush=True)
            dbos_rows, meta["dbos"] = measure_dbos(dbos_systems, services.urls, rates, seconds, repeats)
            rows += dbos_rows
        ours = [s for s in systems if s in OURS]
        if ours:
            print("ExoFlow:", flush=True)
            rows += measure_ours(ours, services.urls, rates, seconds, repeats, services)
    finally:
        services.close()
    summary = summarize(rows)
    order = {s: i for i, s in enumerate([*OURS, *DBOS])}
    summary.sort(key=lambda r: (r["rate"], order.get(r["system"], 99)))
    def ms(v):
        return "-" if v is None else f"{v:.0f}"

    body = [(r["system"], f"{r['rate']:g}", f"{r['throughput_per_s']:.2f}", ms(r["p50_ms"]), ms(r["p99_ms"]),
             f"{r['completed']}/{r['scheduled']}", "yes" if r["ledger_ok"] else "NO") for r in summary]
    table = aligned(("system", "rate/s", "done/s", "p50 ms", "p99 ms", "completed", "ledger once"), body, left=1)
    publish("reservation.json", "Travel reservation (hotel, flight, payment; open loop; medians over repeats)\n" + table,
            meta, {"summary": summary, "rounds": rows})
    if not all(r["ledger_ok"] for r in summary):
        raise SystemExit("a ledger shows a double booking, a key conflict or a missing booking")
    if any(r["completed"] < r["scheduled"] for r in summary):
        raise SystemExit("some reservations failed or did not finish (see 'failed' in the JSON)")


if __name__ == "__main__":
    main()
