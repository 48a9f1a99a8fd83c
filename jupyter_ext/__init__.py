"""ExoFlow's notebook face: ``%load_ext jupyter_ext`` registers ``%exoflow`` / ``%%exoflow``.

Importing this package stays cheap and IPython-free (Ray workers import
``jupyter_ext.tasks`` to run cells); the magics load only in a shell.
"""

from __future__ import annotations

from typing import Any


def load_ipython_extension(shell: Any) -> None:
    """Called by ``%load_ext jupyter_ext`` (and by the ExoFlow kernel at start)."""
    from .magics import register

    register(shell)
