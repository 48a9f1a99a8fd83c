"""A local payment service that dedupes by ``Idempotency-Key``, as real payment APIs do.

It counts what it *applied* (one charge per key) and every request it saw, so a
test can prove a workflow charged once however often the driver crashed. A key
reused with a different amount is refused (HTTP 422), as Stripe does: that
would mean a nondeterministic value leaked into a retried effect.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PaymentService:
    def __init__(self) -> None:
        self.applied: dict[str, dict] = {}
        self.requests: list[tuple[str, float]] = []
        self.conflicts: list[str] = []
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                key = self.headers.get("Idempotency-Key", "")
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, reply = service.charge(key, body["amount"])
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def charge(self, key: str, amount: float) -> tuple[int, dict]:
        with self._lock:
            self.requests.append((key, amount))
            if not key:
                return 400, {"error": "Idempotency-Key header required"}
            seen = self.applied.get(key)
            if seen is None:
                seen = self.applied[key] = {"charge_id": f"ch_{len(self.applied) + 1}", "amount": amount}
            elif seen["amount"] != amount:
                self.conflicts.append(key)
                return 422, {"error": "key reused with different parameters"}
            return 200, seen

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
