"""Hotel, flight and payment services for the travel-reservation demo and benchmark.

Each is a small local HTTP service that dedupes by ``Idempotency-Key``, as real
booking and payment APIs do: the first request with a key is *applied* (a room,
a seat, a charge in the ledger); a retry with the same key gets the same reply
and applies nothing; the same key with a different body is refused (HTTP 422).
Every request is counted, so a ledger proves what happened: ``requests`` may
exceed ``applied`` (retries after a crash), but a trip booked twice under two
keys (a double booking) is listed in ``double``.

    services = TravelServices()            # three threads in this process
    services = TravelServices.spawn()      # or a subprocess (benchmarks: no GIL shared with the driver)
    services.urls                          # {"hotel": "http://127.0.0.1:…/hotel", …}
    services.ledger()                      # per service: applied, requests, replays, conflicts, double
    services.close()

The workflow (one reservation = reserve a hotel room, reserve a flight seat,
charge the card; each an idempotent effect keyed by ``exo.context().idempotency_key``)
is :func:`reservation`; ``python travel_services.py drive …`` runs many at once as a
driver process (the demo kills it with SIGKILL and resumes). Only the standard
library is needed to import this module (the DBOS baseline runs it in its own venv).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = ("hotel", "flight", "payment")


class Service:
    """One HTTP service: POST applies once per ``Idempotency-Key``; GET /ledger reports."""

    def __init__(self, kind: str, latency_s: float = 0.0, port: int = 0) -> None:
        self.kind, self.latency_s = kind, latency_s
        self.applied: dict[str, dict] = {}  # key -> what was applied
        self.by_trip: dict[str, list[str]] = {}  # trip -> keys applied for it (more than one: double booking)
        self.requests = 0
        self.replays = 0
        self.conflicts: list[str] = []
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if service.latency_s:
                    time.sleep(service.latency_s)
                self._reply(*service.apply(self.headers.get("Idempotency-Key", ""), body))

            def do_GET(self) -> None:  # noqa: N802
                self._reply(200, service.ledger())

            def _reply(self, status: int, reply: dict) -> None:
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{kind}"
        threading.Thread(target=self.server.serve_forever, name=f"{kind}-service", daemon=True).start()

    def apply(self, key: str, body: dict) -> tuple[int, dict]:
        with self._lock:
            self.requests += 1
            if not key:
                return 400, {"error": "Idempotency-Key header required"}
            seen = self.applied.get(key)
            if seen is not None:
                if seen["body"] != body:
                    self.conflicts.append(key)
                    return 422, {"error": "Idempotency-Key reused with a different request"}
                self.replays += 1
                return 200, {**seen["reply"], "replayed": True}
            trip = str(body.get("trip"))
            reply = {"id": f"{self.kind[0].upper()}{len(self.applied) + 1:04d}", "trip": trip,
                     "amount": body.get("amount")}
            self.applied[key] = {"body": body, "reply": reply}
            self.by_trip.setdefault(trip, []).append(key)
            return 200, reply

    def ledger(self) -> dict:
        with self._lock:
            return {"kind": self.kind, "applied": len(self.applied), "requests": self.requests,
                    "replays": self.replays, "conflicts": list(self.conflicts),
                    "trips": len(self.by_trip), "double": sorted(t for t, k in self.by_trip.items() if len(k) > 1),
                    "amount": sum(a["reply"]["amount"] or 0 for a in self.applied.values())}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TravelServices:
    """The three services, in this process (threads) or in a subprocess (:meth:`spawn`)."""

    def __init__(self, latency_s: float = 0.0, ports: dict | None = None) -> None:
        self.process: subprocess.Popen | None = None
        self.services = {k: Service(k, latency_s, (ports or {}).get(k, 0)) for k in KINDS}
        self.urls = {k: s.url for k, s in self.services.items()}

    @classmethod
    def spawn(cls, latency_s: float = 0.0) -> "TravelServices":
        """Start the services in their own Python process; ``close()`` stops it."""
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", "--latency", str(latency_s)],
                                stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the travel services did not start")
        self = cls.__new__(cls)
        self.process, self.services, self.urls = proc, {}, json.loads(line)
        return self

    def ledger(self) -> dict[str, dict]:
        if self.services:
            return {k: s.ledger() for k, s in self.services.items()}
        return {k: get_json(url) for k, url in self.urls.items()}

    def rows(self) -> list[tuple]:
        """One row per service: (service, applied, trips, double bookings, idempotent replays, conflicts)."""
        return [(k, v["applied"], v["trips"], len(v["double"]), v["replays"], len(v["conflicts"]))
                for k, v in self.ledger().items()]

    def close(self) -> None:
        for s in self.services.values():
            s.close()
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


# -- client --------------------------------------------------------------------------


def post(url: str, key: str, body: dict, timeout: float = 30) -> dict:
    """POST with an Idempotency-Key; the service's reply (raises on an HTTP error)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Idempotency-Key": key})
    with urllib.request.urlopen(req, timeout=timeout) as reply:
        return json.loads(reply.read())


def get_json(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


def trip(i: int) -> dict:
    """Trip ``i``: its hotel and flight prices (fixed, so every run books the same amounts)."""
    return {"trip": f"trip-{i:03d}", "hotel": 80 + (i * 37) % 170, "flight": 120 + (i * 53) % 380}


def start_ray(attempts: int = 3) -> str:
    """Start a local Ray of our own (never join someone's ``ray start``); its address, for drivers to join.

    Ray gives up after 30 s when a raylet is slow to register (a busy 2-core machine): try again.
    """
    import ray

    for attempt in range(attempts):
        try:
            ray.init(address="local", include_dashboard=False)
            return ray.get_runtime_context().gcs_address
        except Exception:
            ray.shutdown()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# -- the workflow (ExoFlow) ----------------------------------------------------------------


def _book(kind: str, trip: dict, url: str, *after: Any) -> dict:
    import exoflow_kernel as exo

    if trip.get("pause"):  # the demo slows trips down, to crash in the middle of them
        time.sleep(trip["pause"])
    return post(url, exo.context().idempotency_key, {"trip": trip["trip"], "amount": trip[kind]})


def reserve_hotel(trip: dict, url: str, *after: Any) -> dict:
    return _book("hotel", trip, url)


def reserve_flight(trip: dict, url: str, *after: Any) -> dict:
    return _book("flight", trip, url)


def charge(trip: dict, url: str, hotel: dict, flight: dict, approval: Any = None) -> dict:
    import exoflow_kernel as exo

    if approval is not None and approval is not True:
        return {"trip": trip["trip"], "status": "rejected", "approval": approval}
    paid = post(url, exo.context().idempotency_key,
                {"trip": trip["trip"], "amount": hotel["amount"] + flight["amount"]})
    return {"trip": trip["trip"], "status": "booked", "hotel": hotel["id"], "flight": flight["id"],
            "charge": paid["id"], "amount": paid["amount"]}


_tasks: dict[tuple, Any] = {}


def _task(func: Any, checkpoint: str) -> Any:
    import exoflow_kernel as exo

    key = (func.__name__, checkpoint)
    if key not in _tasks:
        _tasks[key] = exo.task(func, effect="idempotent", checkpoint=checkpoint, max_retries=3)
    return _tasks[key]


def reservation(t: dict, urls: dict, mode: str = "parallel", approval: bool = False) -> Any:
    """One reservation as an ExoFlow DAG.

    ``mode``: "serial" (hotel, then flight, then charge), "parallel" (hotel and
    flight at once, then charge) or "async" (parallel, checkpoints written off the
    critical path). ``approval``: the charge also waits for event "approved"
    (``exo.send_event(workflow_id, "approved", True)``; anything else rejects).
    """
    import exoflow_kernel as exo

    checkpoint = "async" if mode == "async" else "sync"
    hotel = _task(reserve_hotel, checkpoint).bind(t, urls["hotel"])
    flight = _task(reserve_flight, checkpoint).bind(t, urls["flight"], *([hotel] if mode == "serial" else []))
    extra = [exo.wait_for_event("approved")] if approval else []
    return _task(charge, checkpoint).bind(t, urls["payment"], hotel, flight, *extra)


def _pickle_by_value() -> None:
    """Ray workers need not find this file on their path: its functions travel by value."""
    for name in ("cloudpickle", "ray.cloudpickle"):  # the engine's pickler, and Ray's own (vendored) one
        try:
            import importlib

            importlib.import_module(name).register_pickle_by_value(sys.modules[__name__])
        except Exception:  # not installed (the DBOS venv has neither)
            pass


if __name__ != "__main__":
    _pickle_by_value()


# -- command line: serve the services, or drive many reservations ------------------------------


def _drive(argv: list[str]) -> None:
    """``drive --store S --ray-address A --urls JSON --trips N [--approve 7,12] [--mode M]``"""
    import argparse

    p = argparse.ArgumentParser(prog="travel_services.py drive")
    p.add_argument("--store", required=True)
    p.add_argument("--ray-address")
    p.add_argument("--urls", required=True)
    p.add_argument("--trips", type=int, default=30)
    p.add_argument("--approve", default="", help="trip numbers that need an approval (event 'approved')")
    p.add_argument("--mode", default="parallel")
    p.add_argument("--pause", type=float, default=0.0, help="seconds each booking call waits first")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import travel_services as ts  # by module name (not __main__), so Ray pickles it by value
    import exoflow_kernel as exo

    exo.init(args.store, ray_address=args.ray_address)
    urls = json.loads(args.urls)
    needs = {int(x) for x in args.approve.split(",") if x}
    futures = [exo.run_async(ts.reservation({**ts.trip(i), "pause": args.pause}, urls, args.mode, approval=i in needs),
                             workflow_id=ts.trip(i)["trip"]) for i in range(args.trips)]
    print("started", len(futures), flush=True)
    for f in futures:
        f.result()
    print("done", flush=True)


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"]:
        latency = float(argv[argv.index("--latency") + 1]) if "--latency" in argv else 0.0
        services = TravelServices(latency)
        print(json.dumps(services.urls), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            services.close()
    elif argv[:1] == ["drive"]:
        _drive(argv[1:])
    else:
        raise SystemExit("usage: travel_services.py serve [--latency S] | drive --store S --urls JSON ...")


if __name__ == "__main__":
    main(sys.argv[1:])
