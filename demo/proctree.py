"""Crash a process on purpose: freeze its whole tree, then SIGKILL every member.

Used by the demos (``demo/crash_resume.py``, ``demo/etl_notebook.py``) and by the ETL
notebook's helper (``notebooks/etl_support.py``). A driver that started a local Ray has
children (gcs_server, raylet, workers, agents); killing only the driver would leave them
running, and killing them one by one lets survivors spawn new ones. So every process of
the tree is first stopped with SIGSTOP (a stopped process cannot fork), and only then
is each one sent SIGKILL: no atexit, no Ray shutdown, no DuckDB close - a crash.
"""

from __future__ import annotations

import signal
import time

import psutil


def kill_tree(pid: int, timeout: float = 10.0) -> list[str]:
    """SIGSTOP ``pid`` and all its descendants until the tree is stable, then SIGKILL them all.

    Returns ``"pid:name"`` of every process killed (``pid`` first). Raises RuntimeError
    if one is still alive ``timeout`` seconds later.
    """
    root = psutil.Process(pid)
    frozen: dict[int, psutil.Process] = {}
    while True:  # stop until the tree is stable: a stopped process cannot fork
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            tree = list(frozen.values())
        new = [p for p in tree if p.pid not in frozen]
        if not new:
            break
        for p in new:
            try:
                p.send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                pass
            frozen[p.pid] = p
    names = []
    for p in frozen.values():
        try:
            names.append(f"{p.pid}:{p.name()}")
            p.kill()  # SIGKILL
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + timeout
    while True:  # gone, or a zombie (dead; only its parent's wait() is missing)
        alive = [p for p in frozen.values() if alive_process(p)]
        if not alive:
            return names
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes survived SIGKILL: {[p.pid for p in alive]}")
        time.sleep(0.05)


def alive_process(p: psutil.Process) -> bool:
    """True if ``p`` runs (a zombie counts as dead)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def all_dead(pids: list[int]) -> bool:
    """True if none of ``pids`` is a live process any more."""
    out = True
    for pid in pids:
        try:
            out = out and not alive_process(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out
