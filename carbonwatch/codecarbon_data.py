"""Locate codecarbon's bundled data files (CPU power table, energy mix, cloud regions).

carbonwatch uses codecarbon's data, not its tracker: the files are found with
``importlib.util.find_spec`` so that codecarbon itself is never imported (its ``__init__`` imports
the tracker, which is slow and probes hardware)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def codecarbon_data_path(relative: str) -> Path | None:
    """``codecarbon/data/<relative>`` of the installed package, or None when absent."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / "data" / relative
        if path.is_file():
            return path
    return None
