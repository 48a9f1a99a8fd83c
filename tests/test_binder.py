"""The Binder set-up, rebuilt from ``binder/`` alone in a fresh virtual environment.

Binder (repo2docker) clones the repository, installs ``binder/apt.txt`` with apt, runs
``pip install -r binder/requirements.txt`` and then ``binder/postBuild`` from the
repository's root. This test does the same in a copy of the working tree (so the shared
checkout is never written to), in a ``python3 -m venv`` *without* system site-packages (a
dependency missing from binder/ must fail here, not hide behind this machine's packages),
and then runs notebooks with nbval inside that environment.

Cost: the environment build alone (ray, pyarrow, duckdb, jupyterlab) takes minutes on
this 2-core machine, so by default only ``notebooks/quickstart.ipynb`` runs inside it;
every other notebook is checked to import its helpers there.
``EXOFLOW_BINDER_NOTEBOOKS=all`` runs every notebook under nbval in the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
SKIP = ("bench/.venv", "demo-output", ".git/", ".exoflow", "tests/artifacts")


@pytest.fixture(scope="session")
def ray_cluster():
    """Everything here runs in the venv's own processes; this process needs no Ray."""
    yield


def run(cmd: list[str], *, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def copy_checkout(dest: Path) -> None:
    """The files a clone would have (tracked and not ignored), from the working tree."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in files:
        src = ROOT / rel
        if not rel or any(rel.startswith(s) for s in SKIP) or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


def test_binder_files_are_what_binder_reads():
    assert (BINDER / "requirements.txt").is_file() and (BINDER / "postBuild").is_file()
    assert os.access(BINDER / "postBuild", os.X_OK), "repo2docker runs postBuild only if it is executable"
    assert "graphviz" in (BINDER / "apt.txt").read_text().split()
    post = (BINDER / "postBuild").read_text()
    assert post.startswith("#!") and "exoflow_kernel.kernelspec install" in post


def test_binder_environment_runs_the_notebooks(tmp_path):
    repo, venv = tmp_path / "repo", tmp_path / "venv"
    copy_checkout(repo)
    assert (repo / "binder" / "postBuild").exists()
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=dict(os.environ), timeout=300)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "EXOFLOW_STORE", "VIRTUAL_ENV", "JUPYTER_PATH", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", JUPYTER_PLATFORM_DIRS="1")

    # what Binder does: requirements, then postBuild from the repository's root
    run([str(py), "-m", "pip", "install", "--quiet", "--no-compile", "-r", "binder/requirements.txt"], cwd=repo,
        env=env, timeout=1800)
    run(["bash", "binder/postBuild"], cwd=repo, env=env, timeout=900)

    # the package is the copy's, the "ExoFlow" kernel is installed in the venv
    where = run([str(py), "-c", "import exoflow_kernel, jupyter_ext; print(exoflow_kernel.__file__)"], cwd=tmp_path,
                env=env, timeout=120).stdout.strip()
    assert where.startswith(str(repo)), where
    specs = json.loads(run([str(venv / "bin" / "jupyter"), "kernelspec", "list", "--json"], cwd=tmp_path, env=env,
                           timeout=120).stdout)["kernelspecs"]
    assert "exoflow" in specs, specs
    assert specs["exoflow"]["spec"]["argv"][0] == str(py) and specs["exoflow"]["spec"]["argv"][-1] == "jupyter_ext"

    # every notebook's helper modules import there; then nbval (test tools only, not Binder's)
    helpers = sorted(p.stem for p in (repo / "notebooks").glob("*.py") if p.stem != "refresh")
    if helpers:
        run([str(py), "-c", "; ".join(f"import {h}" for h in helpers)], cwd=repo / "notebooks", env=env, timeout=300)
    run([str(py), "-m", "pip", "install", "--quiet", "--no-compile", "nbval", "pytest"], cwd=repo, env=env,
        timeout=600)
    notebooks = (sorted(str(p.relative_to(repo)) for p in (repo / "notebooks").glob("*.ipynb"))
                 if os.environ.get("EXOFLOW_BINDER_NOTEBOOKS") == "all" else ["notebooks/quickstart.ipynb"])
    out = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--nbval",
                          "--nbval-current-env", "--nbval-cell-timeout=300",
                          "--nbval-sanitize-with", "notebooks/sanitize.cfg", *notebooks],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"nbval in the Binder environment failed:\n{out.stdout[-6000:]}\n{out.stderr[-2000:]}"
    assert " passed" in out.stdout and "failed" not in out.stdout.splitlines()[-1], out.stdout[-2000:]
