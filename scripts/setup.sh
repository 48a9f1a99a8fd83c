#!/usr/bin/env bash
# Set up a fresh Debian machine for exoflow-notebooks; safe to re-run, needs no stdin.
#
#   bash scripts/setup.sh            # installs graphviz (if `dot` is missing) and the package
#   EXOFLOW_SETUP_FORCE=1 bash ...   # re-install the Python package even if it looks current
#
# Needs Python >= 3.10 as `python3`. Installs into that Python (no virtualenv); on a
# Debian-managed Python, PEP 668 is overridden for this install only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
export DEBIAN_FRONTEND=noninteractive

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# -- apt, as root or through passwordless sudo --------------------------------------
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these yourself: $*"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo; install these yourself: $*"
        sudo=(sudo -n)
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        "${sudo[@]}" apt-get update -qq </dev/null
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

# -- Python ----------------------------------------------------------------------------
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
python3 - <<'PY' || die "Python >= 3.10 is needed (found $(python3 --version 2>&1))"
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip does not work"

# -- Graphviz's `dot` (renders the recovery graph SVGs) ---------------------------------
if command -v dot >/dev/null 2>&1; then
    say "graphviz: $(command -v dot) already there"
else
    apt_install graphviz
    command -v dot >/dev/null 2>&1 || die "graphviz installed but \`dot\` is still not on PATH"
fi

# -- Debian's chromium: tests/test_browser.py drives it through Playwright -------------------
# (Playwright's own browser downloads are never used; without chromium that test skips)
if [ -x /usr/bin/chromium ]; then
    say "chromium: /usr/bin/chromium already there"
else
    ( apt_install chromium ) || say "warning: chromium could not be installed; the browser test will skip"
fi

# -- the package, editable, with the test extra ------------------------------------------
# Skip pip when this checkout is already installed with the same pyproject.toml.
stamp_dir="${XDG_CACHE_HOME:-$HOME/.cache}/exoflow-notebooks"
stamp="$stamp_dir/setup-$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open("pyproject.toml","rb").read() + sys.executable.encode() + sys.version.encode()).hexdigest()[:16])')"
installed_here() {
    python3 - "$ROOT" <<'PY' >/dev/null 2>&1
import os, sys
import exoflow_kernel, ray, duckdb, graphviz, psutil, pytest, pytest_timeout  # noqa: F401
root = os.path.realpath(sys.argv[1])
sys.exit(0 if os.path.realpath(exoflow_kernel.__file__).startswith(root + os.sep) else 1)
PY
}
if [ "${EXOFLOW_SETUP_FORCE:-0}" != "1" ] && [ -f "$stamp" ] && installed_here; then
    say "python package already installed from $ROOT (EXOFLOW_SETUP_FORCE=1 to redo)"
else
    say "python3 -m pip install -e .[test]"
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        python3 -m pip install --quiet --no-input -e ".[test]" </dev/null
    installed_here || die "the package did not install from $ROOT (see pip's output above)"
    mkdir -p "$stamp_dir" && : >"$stamp"
fi
python3 -c 'import nbval, playwright, jupyterlab, ipywidgets' 2>/dev/null || {
    say "python3 -m pip install -e .[test] (notebook test tools missing)"
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        python3 -m pip install --quiet --no-input -e ".[test]" </dev/null
    python3 -c 'import nbval, playwright, jupyterlab, ipywidgets' || die "nbval/playwright/jupyterlab did not install"
}
say "ready: $(python3 --version), $(dot -V 2>&1 | head -n1)"
