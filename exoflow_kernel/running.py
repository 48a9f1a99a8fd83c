"""The workflows this process is running right now, by store and id.

Ray-free on purpose: ``status``, ``list`` and the owner's socket ask it, and
the CLI's read commands must not pay Ray's import (seconds on a busy machine).
"""

from __future__ import annotations

import threading
from typing import Protocol

from .store import Store


class Running(Protocol):
    """What the registry needs of a coordinator."""

    workflow_id: str

    @property
    def store(self) -> Store: ...

    def wake(self) -> None: ...


_live: dict[tuple[str, str], Running] = {}
_lock = threading.Lock()


def live_workflows(store: Store) -> list[str]:
    """Ids of the workflows this process runs on ``store``."""
    with _lock:
        return [wf for (root, wf) in _live if root == str(store.root)]


def live(store: Store, workflow_id: str) -> Running | None:
    """The coordinator running ``workflow_id`` here, if any."""
    with _lock:
        return _live.get((str(store.root), workflow_id))


def notify_event(store: Store, workflow_id: str) -> None:
    """An event arrived: wake the coordinator that may be waiting for it."""
    coordinator = live(store, workflow_id)
    if coordinator is not None:
        coordinator.wake()


def register(coordinator: Running) -> None:
    with _lock:
        _live[(str(coordinator.store.root), coordinator.workflow_id)] = coordinator


def unregister(coordinator: Running) -> None:
    with _lock:
        _live.pop((str(coordinator.store.root), coordinator.workflow_id), None)
