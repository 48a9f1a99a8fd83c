"""Shared fixtures: a real Ray (started once per session) and a fresh store per test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import exoflow_kernel as exo
from exoflow_kernel.executor import start_local_ray

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def ray_cluster():
    """One local Ray for the in-process tests; workers can import the test modules."""
    import ray

    if not ray.is_initialized():
        path = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
        start_local_ray(runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_cluster) -> str:
    """The session's Ray, for driver subprocesses to join (``$EXOFLOW_RAY_ADDRESS``) instead of
    starting a Ray each: a kill -9'd driver that joined a cluster takes only itself down, and
    Ray ends the tasks it owned."""
    import ray

    return ray.get_runtime_context().gcs_address


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A fresh store directory, opened in this process (Ray is kept across tests)."""
    path = tmp_path / "store"
    exo.init(path)
    return path


@pytest.fixture
def counter_dir(tmp_path: Path) -> Path:
    """A folder where tasks append one line per real execution (see ``count``)."""
    path = tmp_path / "counts"
    path.mkdir()
    return path


def count(counter_dir: Path, name: str) -> int:
    """How many times a task really ran: the lines it appended to its counter file."""
    f = Path(counter_dir) / name
    return len(f.read_text().splitlines()) if f.exists() else 0


def run_script(code: str, store: Path, *, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a driver script in a fresh Python process with EXOFLOW_STORE set."""
    full_env = {**os.environ, "EXOFLOW_STORE": str(store), "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=timeout)
