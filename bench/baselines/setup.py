"""Install the baselines' virtual environments, idempotently (skipped when present).

* ``bench/.venv-rayworkflows``: ``ray[default]==2.47.1`` + ``pyarrow`` — the last Ray that
  has ``ray.workflow`` (removed after 2.47; our engine runs on Ray 2.60).
* ``bench/.venv-dbos``: ``dbos`` (DBOS Transact, SQLite system database). It would install
  into the main environment without a conflict (``pip install --dry-run dbos`` on Ray 2.60
  adds SQLAlchemy, psycopg, croniter), but a venv keeps the engine's environment, which other
  work tests against, exactly as it was.

A venv counts as ready when its import check passes (right version, everything importable);
a half-made venv (install interrupted) is made again from scratch.

    python bench/baselines/setup.py          # make both (no-op when ready)
    python bench/baselines/setup.py --check  # exit 1 if one is missing
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
VENVS = {
    "rayworkflows": {
        "dir": BENCH / ".venv-rayworkflows",
        "packages": ["ray[default]==2.47.1", "pyarrow"],
        "check": "import ray, pyarrow; from ray import workflow; assert ray.__version__ == '2.47.1'",
    },
    "dbos": {
        "dir": BENCH / ".venv-dbos",
        "packages": ["dbos"],
        "check": "import dbos",
    },
}


def python_of(name: str) -> Path:
    """The interpreter of one baseline's venv."""
    return VENVS[name]["dir"] / "bin" / "python"


def ready(name: str) -> bool:
    spec = VENVS[name]
    if not python_of(name).exists():
        return False
    return subprocess.run([str(python_of(name)), "-c", spec["check"]], capture_output=True).returncode == 0


def ensure(name: str) -> Path:
    """Make the venv unless it is ready; return its python."""
    spec = VENVS[name]
    if ready(name):
        return python_of(name)
    print(f"baselines: installing {name} into {spec['dir']} ({' '.join(spec['packages'])}) ...", flush=True)
    shutil.rmtree(spec["dir"], ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(spec["dir"])], check=True)
    pip = [str(python_of(name)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *spec["packages"]], check=True)
    subprocess.run([str(python_of(name)), "-c", spec["check"]], check=True)
    return python_of(name)


def versions(name: str) -> dict:
    """Installed versions of the packages that matter, for the results' metadata."""
    code = ("import json, importlib.metadata as m\nout = {}\n"
            "for p in ('ray', 'pyarrow', 'dbos', 'sqlalchemy'):\n"
            "    try: out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    out = subprocess.run([str(python_of(name)), "-c", code], capture_output=True, text=True)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only report; exit 1 if a venv is missing")
    args = p.parse_args()
    missing = []
    for name in VENVS:
        if args.check:
            ok = ready(name)
            print(f"{name}: {'ready' if ok else 'missing'} ({VENVS[name]['dir']})")
            missing += [] if ok else [name]
        else:
            ensure(name)
            print(f"{name}: ready ({VENVS[name]['dir']}) {versions(name)}")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
