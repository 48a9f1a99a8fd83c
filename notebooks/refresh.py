"""Re-execute the demo notebooks in place, so their saved outputs are what nbval compares against.

    python3 notebooks/refresh.py [notebooks/NAME.ipynb ...]     # default: every notebook here

Run it after changing a notebook (or what it shows), look at the diff, commit it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def refresh(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)  # no saved widget state: static viewers show each widget's SVG/text
    NotebookClient(nb, timeout=300, kernel_name="python3", record_timing=False, store_widget_state=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    print(f"refreshed {path}")


if __name__ == "__main__":
    for arg in sys.argv[1:] or sorted(HERE.glob("*.ipynb")):
        refresh(Path(arg).resolve())
