"""The "ExoFlow" Jupyter kernel: ipykernel with the notebook extension preloaded.

    python -m exoflow_kernel.kernelspec install [--user | --sys-prefix | --prefix DIR] [--name NAME]

The kernel is plain ipykernel started with ``--ext jupyter_ext`` (IPython's
``InteractiveShellApp.extra_extensions``), so ``%exoflow`` works without
``%load_ext`` and the first cell says which workflows a dead kernel left
running. Only the extension's *name* appears here: the engine never imports
the notebook face.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "exoflow"


def kernel_json(python: str = sys.executable) -> dict:
    """The kernel.json of the ExoFlow kernel for this Python."""
    return {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--ext", "jupyter_ext"],
        "display_name": "ExoFlow",
        "language": "python",
        "metadata": {"debugger": True},
    }


def install(user: bool = False, prefix: str | None = None, name: str = KERNEL_NAME) -> str:
    """Install the kernelspec (where ``jupyter kernelspec list`` finds it); return its folder."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(kernel_json(), indent=1))
        return KernelSpecManager().install_kernel_spec(tmp, name, user=user, prefix=prefix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exoflow_kernel.kernelspec",
                                     description="Install the ExoFlow Jupyter kernel.")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install the kernelspec")
    where = inst.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for this user only (~/.local/share/jupyter)")
    where.add_argument("--sys-prefix", action="store_true", help=f"into this environment ({sys.prefix})")
    where.add_argument("--prefix", metavar="DIR", help="under DIR/share/jupyter/kernels")
    inst.add_argument("--name", default=KERNEL_NAME, help=f"kernel name (default: {KERNEL_NAME})")
    args = parser.parse_args(argv)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install(user=args.user, prefix=prefix, name=args.name)
    print(f"Installed the ExoFlow kernel in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
