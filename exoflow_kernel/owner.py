"""Who owns a store, and how other processes talk to the owner.

DuckDB lets one process hold a database file; another process cannot open it,
not even read-only. So the process that holds ``lineage.duckdb`` is the store's
*owner*: it writes ``owner.json`` (pid, start time, host, a Unix socket) and
answers other processes' read queries and events over that socket, from its
own in-process connection, without ever blocking its writer. A store whose
owner died is simply opened; the newcomer then kills the Ray agent processes
the dead owner left behind (they outlive a ``kill -9``'d driver).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import socketserver
import struct
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

_FRAME = struct.Struct("<Q")


@dataclass
class OwnerInfo:
    pid: int
    create_time: float
    host: str
    socket: str
    role: str = "writer"
    leftovers: list[tuple[int, float]] = field(default_factory=list)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

    def alive(self) -> bool:
        if self.host != socket.gethostname():
            return True  # cannot tell; assume alive rather than steal
        return _same_process(self.pid, self.create_time)


def _same_process(pid: int, create_time: float) -> bool:
    """``pid`` still runs the process born at ``create_time``. A zombie does not: a
    kill -9'd driver whose parent has not reaped it yet is dead, and must be taken over."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def read_owner(root: Path) -> OwnerInfo | None:
    try:
        data = json.loads((root / "owner.json").read_text())
        data["leftovers"] = [tuple(x) for x in data.get("leftovers", [])]
        return OwnerInfo(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def write_owner(root: Path, info: OwnerInfo) -> None:
    tmp = root / f".owner.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(info)))
    os.replace(tmp, root / "owner.json")


def remove_owner(root: Path, pid: int) -> None:
    """Delete owner.json if it names ``pid`` (a reader sharing the file leaves another's)."""
    info = read_owner(root)
    if info is not None and info.pid == pid:
        (root / "owner.json").unlink(missing_ok=True)


def me(sock_path: str, role: str) -> OwnerInfo:
    proc = psutil.Process()
    return OwnerInfo(os.getpid(), proc.create_time(), socket.gethostname(), sock_path, role)


def ray_descendants() -> list[tuple[int, float]]:
    """Our child processes (the local Ray we started), to clean up if we die."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            out.append((child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            continue
    return out


def kill_leftovers(info: OwnerInfo) -> int:
    """Kill what a dead owner's local Ray left running; return how many."""
    killed = 0
    for pid, create_time in info.leftovers:
        if _same_process(pid, create_time):
            try:
                psutil.Process(pid).kill()
                killed += 1
            except psutil.NoSuchProcess:
                pass
    return killed


def socket_path(root: Path) -> str:
    """A short socket path (Unix sockets allow ~100 bytes) unique to this store and process;
    the pid in the name lets :func:`sweep_sockets` tell a dead owner's socket."""
    digest = abs(hash(str(root.resolve()))) % 10**10
    return os.path.join(_socket_folder(), f"exoflow-{os.getpid()}-{digest}.sock")


def _socket_folder() -> str:
    folder = tempfile.gettempdir()
    return "/tmp" if len(folder) > 60 else folder  # a long $TMPDIR would not leave room for the name


def sweep_sockets() -> None:
    """Remove the sockets of owners that died without closing (``kill -9``): their stores
    may never be opened again, so their successors cannot be the ones to do it."""
    for path in Path(_socket_folder()).glob("exoflow-*-*.sock"):
        pid = path.name.split("-")[1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)) and path.lstat().st_uid == os.getuid():
            path.unlink(missing_ok=True)


def _send(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=5)
    sock.sendall(_FRAME.pack(len(data)) + data)


def _recv(sock: socket.socket) -> Any:
    head = _recv_exact(sock, _FRAME.size)
    return pickle.loads(_recv_exact(sock, _FRAME.unpack(head)[0]))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("owner closed the connection")
        buf += chunk
    return bytes(buf)


class OwnerServer:
    """Serves ``handler(op, *args)`` to other local processes over a Unix socket."""

    def __init__(self, path: str, handler: Callable[..., Any]) -> None:
        self.path = path
        if os.path.exists(path):
            os.unlink(path)

        class _Handler(socketserver.BaseRequestHandler):
            def handle(inner) -> None:  # noqa: N805 - socketserver's signature
                op, args = _recv(inner.request)
                try:
                    reply = (True, handler(op, *args))
                except Exception as exc:  # the caller re-raises it on its side
                    reply = (False, exc)
                _send(inner.request, reply)

        self.server = socketserver.ThreadingUnixStreamServer(path, _Handler)
        self.server.daemon_threads = True
        os.chmod(path, 0o600)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="exoflow-owner", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class OwnerUnreachable(Exception):
    """The owner did not answer on its socket: it is stuck (``timed_out``), or it is
    going away (its socket refused, vanished or closed mid-call)."""

    def __init__(self, message: str, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def call(path: str, op: str, *args: Any, timeout: float = 30.0) -> Any:
    """Ask the owner at ``path`` to run ``op``; re-raise its exception here."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            _send(sock, (op, args))
            ok, value = _recv(sock)
    except (OSError, ConnectionError) as exc:
        raise OwnerUnreachable(f"{type(exc).__name__}: {exc}", isinstance(exc, TimeoutError)) from None
    if not ok:
        raise value
    return value
